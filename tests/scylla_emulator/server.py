"""The emulator's CQL native protocol v4 server (asyncio, one event loop in a daemon thread).

``EmulatorServer(host, port, vnodes=, shards=, engine=)``: ``start()`` returns once the socket
listens (port 0 picks a free port; ``.host``/``.port``/``.engine`` are then set), ``stop()``
closes every connection and joins the thread; it is also a context manager.

Contract:

* the engine is not thread-safe and is only ever called from the server loop; other threads use
  ``call(fn, *args)`` which runs ``fn(*args)`` on the loop and returns its result;
* every connection gets a shard (the one with the fewest open connections, like Scylla without a
  shard-aware port) and SUPPORTED advertises it with the SCYLLA_* sharding keys;
* ``USE`` is tracked per connection; after every schema change a SCHEMA_CHANGE event is pushed to
  every connection that REGISTERed for it (after the RESULT of the statement that caused it);
* malformed input is answered with a PROTOCOL_ERROR; an unexpected engine exception becomes a
  SERVER_ERROR; neither stops the server. A frame of another protocol version gets
  "unsupported protocol version" and the connection is closed (the driver then downgrades to v4);
* optional PasswordAuthenticator (``credentials=(user, password)``), off by default. With an
  engine that has roles (``engine.auth``, see ``auth.py``) the credentials are a superuser, other
  roles log in too, and every request runs as the connection's role (``user=`` to the engine);
  with any other engine the credentials are the only login and nothing is authorized.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tests.scylla_emulator import protocol as P
from tests.scylla_emulator.api import (
    BatchStatement,
    CqlError,
    ErrorCode,
    PreparedInfo,
    RowsResult,
    SchemaChangeResult,
    SetKeyspaceResult,
)
from tests.scylla_emulator.cdc import LOG_SUFFIX
from tests.tls import server_context

__all__ = ["PASSWORD_AUTHENTICATOR", "EmulatorServer", "LateWrites", "LogReadStats"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PASSWORD_AUTHENTICATOR = "org.apache.cassandra.auth.PasswordAuthenticator"
_DRAIN_AT = 1 << 20  # bytes buffered on a transport before we wait for the client to read
_READ_CHUNK = 1 << 18
_COMPRESS_FROM = 4096  # bytes


class _Conn:
    """State of one client connection."""

    def __init__(self, writer: asyncio.StreamWriter, shard: int) -> None:
        self.writer = writer
        self.shard = shard
        self.keyspace: str | None = None
        self.started = False  # STARTUP done (and authenticated, if required)
        self.authenticating = False
        self.user: str | None = None  # the login role, once authenticated
        self.compress = False
        self.events: set[str] = set()
        self.consistency = 1  # of the request being served (echoed in error bodies)
        self.pending: list[bytes] = []  # frames queued for the next flush()

    def send(self, stream: int, opcode: int, body: bytes) -> None:
        flags = 0
        if self.compress and len(body) >= _COMPRESS_FROM:  # the flag is per frame: small ones stay raw
            body = P.compress_lz4(body)
            flags = P.FLAG_COMPRESSION
        self.pending.append(P.encode_frame(stream, opcode, body, flags=flags))

    def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            if not self.writer.is_closing():
                self.writer.write(data)


class LogReadStats:
    """What the emulator served from CDC log tables (``<table>_scylla_cdc_log``): requests (one
    per page), rows, and requests in flight (received, not yet answered; only above 1 with
    ``log_read_delay``). ``served`` lists ``(monotonic time, rows)`` per answered page."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queries = 0
        self.rows = 0
        self.rows_by_table: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.served: list[tuple[float, int]] = []

    def reset(self) -> None:
        with self.lock:
            self.queries = self.rows = self.in_flight = self.max_in_flight = 0
            self.rows_by_table = {}
            self.served = []


class LateWrites:
    """Client-side timestamps that reached the emulator late: a write whose timestamp T (taken by
    the driver when it created the request) is applied more than ``warn_after`` seconds after T
    lands in the CDC log behind a reader that already read up to ``now - confidence_window`` (the
    out-of-order visibility of scylla-cdc.md §5.1, here from queueing on a loaded machine). Counted,
    the worst kept, and logged (at most every 5 s) so a test that diverged can tell that apart
    from a cdcd bug."""

    def __init__(self, warn_after: float = 0.5) -> None:
        self.warn_after_us = int(warn_after * 1e6)
        self.count = 0
        self.worst_us = 0
        self._logged = 0.0

    def note(self, now_us: int, ts: int) -> None:
        late = now_us - ts
        if late <= self.warn_after_us:
            return
        self.count += 1
        self.worst_us = max(self.worst_us, late)
        t = time.monotonic()
        if t - self._logged >= 5.0:
            self._logged = t
            log.warning(
                "late write: a client timestamp reached the emulator %.3f s after it was taken (%d such "
                "writes so far, worst %.3f s); a CDC reader whose confidence window is shorter can miss it",
                late / 1e6, self.count, self.worst_us / 1e6,
            )  # fmt: skip


tls_context = server_context  # (tests.tls)


class EmulatorServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        vnodes: int = 16,
        shards: int = 2,
        engine: Any = None,
        credentials: tuple[str, str] | None = None,
        log_read_delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
        tablets: bool = False,
        tablet_count: int = 4,
    ) -> None:
        if shards < 1 or vnodes < 1:
            raise ValueError(f"vnodes and shards must be >= 1 (got vnodes={vnodes}, shards={shards})")
        self.host = host
        self.port = port
        self.vnodes = vnodes
        self.shards = shards
        self.tablets = tablets  # new keyspaces use tablets unless created with {'enabled': false}
        self.tablet_count = tablet_count  # tablets of a new table (powers of two; see tablets.py)
        self.engine: Any = engine
        self.credentials = credentials
        # Seconds every CDC log page waits before it is answered (other requests are served
        # meanwhile): makes concurrent log reads overlap, as on a real cluster, so that
        # ``log_stats.max_in_flight`` shows how many a client keeps in flight.
        self.log_read_delay = log_read_delay
        # Serve CQL over TLS only (like Scylla's native_transport_port with client_encryption_options
        # enabled): see ``tls_context`` for a server context, with or without client certificates.
        self.tls = tls
        self.log_stats = LogReadStats()
        self.late_writes = LateWrites()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._prepared: dict[bytes, PreparedInfo] = {}
        self._roles: Any = None  # engine.auth when the engine has roles and permissions

    def _note_timestamp(self, ts: int) -> None:
        """A write's client timestamp, for ``late_writes`` (engines without a clock: wall time)."""
        clock = getattr(self.engine, "now_us", None)
        self.late_writes.note(clock() if clock is not None else int(time.time() * 1e6), ts)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> EmulatorServer:
        if self._thread is not None:
            raise RuntimeError("EmulatorServer already started")
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="scylla-emulator", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    def _run(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.engine is None:
            try:
                from tests.scylla_emulator.engine import EmulatorEngine

                self.engine = EmulatorEngine(
                    vnodes=self.vnodes,
                    shards=self.shards,
                    address=self.host,
                    port=self.port,
                    tablets=self.tablets,
                    tablet_count=self.tablet_count,
                )
            except BaseException:
                self._server.close()
                raise
        self._roles = getattr(self.engine, "auth", None)
        if self._roles is not None and self.credentials is not None:
            self._roles.enable(self.credentials)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.close()
        self._conns.clear()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the server loop (where the engine lives) and return its result."""
        if self._loop is None:
            raise RuntimeError("EmulatorServer is not running")

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    # ---------------------------------------------------------------------------- connections

    def _pick_shard(self) -> int:
        counts = [0] * self.shards
        for c in self._conns:
            counts[c.shard] += 1
        return counts.index(min(counts))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a new connection in a task of our own. (Handing asyncio a coroutine instead makes
        Python 3.11 log 'Exception in callback' with a traceback when ``stop()`` cancels a handler
        that has not started yet: its done-callback calls ``task.exception()`` on a cancelled task.)"""
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection. All complete frames that arrived together are executed in order
        and their answers written with one ``write`` (pipelined drivers send many at once)."""
        conn = _Conn(writer, self._pick_shard())
        self._conns.add(conn)
        buf = bytearray()
        try:
            while data := await reader.read(_READ_CHUNK):
                buf += data
                pos, alive = self._frames(conn, buf)
                del buf[:pos]
                conn.flush()
                if not alive:
                    break
                if writer.transport.get_write_buffer_size() > _DRAIN_AT:
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # client gone, or server stopping
            pass
        except Exception:  # never let one connection take the server down
            log.exception("emulator: connection handler failed")
        finally:
            self._conns.discard(conn)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def _frames(self, conn: _Conn, buf: bytearray) -> tuple[int, bool]:
        """Execute the complete frames in ``buf``: (bytes consumed, False if the connection must
        be closed)."""
        pos, size, hsize = 0, len(buf), P.HEADER.size
        while size - pos >= hsize:
            header = bytes(buf[pos : pos + hsize])
            version = header[0] & 0x7F
            stream = int.from_bytes(header[2:4], "big", signed=True)
            if version != P.VERSION:
                err = P.protocol_error(
                    f"Invalid or unsupported protocol version ({version}); supported versions are (4/v4)"
                )
                conn.pending.append(
                    P.encode_frame(
                        stream, P.Opcode.ERROR, P.encode_error(err), version=3 if version == 3 else 4
                    )
                )
                return size, False
            try:
                _, flags, stream, opcode, length = P.parse_header(header)
            except CqlError as err:
                conn.send(stream, P.Opcode.ERROR, P.encode_error(err))
                return size, False
            if size - pos - hsize < length:
                break
            body = bytes(buf[pos + hsize : pos + hsize + length])
            pos += hsize + length
            self._one_frame(conn, stream, opcode, flags, body)
        return pos, True

    def _one_frame(self, conn: _Conn, stream: int, opcode: int, flags: int, body: bytes) -> None:
        """Execute one request and queue its answer (and the events it causes)."""
        conn.consistency = 1
        try:
            if flags & P.FLAG_COMPRESSION:
                if not conn.compress:
                    raise P.protocol_error("Compressed frame received but no compression was negotiated")
                body = P.decompress_lz4(body)
            events = self._dispatch(conn, stream, opcode, flags, body)
        except CqlError as err:
            conn.send(stream, P.Opcode.ERROR, P.encode_error(err, conn.consistency))
            return
        except Exception as exc:
            log.exception("emulator: request %s failed", P.Opcode.NAMES.get(opcode, opcode))
            crash = CqlError(ErrorCode.SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            conn.send(stream, P.Opcode.ERROR, P.encode_error(crash, conn.consistency))
            return
        for ev in events:
            try:
                self._push_schema_change(ev)
            except Exception:
                log.exception("emulator: cannot push schema change event %r", ev)

    def _push_schema_change(self, ev: SchemaChangeResult) -> None:
        body = P.encode_event_schema_change(ev)
        for c in list(self._conns):
            if "SCHEMA_CHANGE" in c.events and not c.writer.is_closing():
                c.send(-1, P.Opcode.EVENT, body)
                c.flush()  # after the answers queued before it, e.g. the DDL's own RESULT

    # ------------------------------------------------------------------------------ requests

    def supported(self, conn: _Conn) -> dict[str, list[str]]:
        opts: dict[str, list[str]] = {"CQL_VERSION": ["3.3.1"]}
        engine_opts = getattr(self.engine, "supported_options", None)
        if engine_opts is not None:
            opts.update(engine_opts())
        opts.setdefault("SCYLLA_NR_SHARDS", [str(self.shards)])
        opts.setdefault("SCYLLA_PARTITIONER", ["org.apache.cassandra.dht.Murmur3Partitioner"])
        opts.setdefault("SCYLLA_SHARDING_ALGORITHM", ["biased-token-round-robin"])
        opts.setdefault("SCYLLA_SHARDING_IGNORE_MSB", ["12"])
        opts["COMPRESSION"] = list(P.COMPRESSION)
        opts["SCYLLA_SHARD"] = [str(conn.shard)]
        # No shard-aware port: the driver then opens plain connections until every shard is covered.
        opts.pop("SCYLLA_SHARD_AWARE_PORT", None)
        opts.pop("SCYLLA_SHARD_AWARE_PORT_SSL", None)
        return opts

    def _dispatch(
        self, conn: _Conn, stream: int, opcode: int, flags: int, body: bytes
    ) -> list[SchemaChangeResult]:
        op = P.Opcode
        if opcode == op.OPTIONS:
            conn.send(stream, op.SUPPORTED, P.encode_supported(self.supported(conn)))
            return []
        if opcode == op.STARTUP:
            if conn.started or conn.authenticating:
                raise P.protocol_error("Unexpected STARTUP message: the connection is already started")
            options = P.decode_startup(body, flags)
            compress = options.get("COMPRESSION") is not None
            if self.credentials is not None or (self._roles is not None and self._roles.enabled):
                conn.authenticating = True
                conn.compress = compress
                conn.send(stream, op.AUTHENTICATE, P.encode_authenticate(PASSWORD_AUTHENTICATOR))
            else:
                conn.send(stream, op.READY, P.encode_ready())
                conn.compress = compress
                conn.started = True
            return []
        if opcode == op.AUTH_RESPONSE:
            if not conn.authenticating:
                raise P.protocol_error("Unexpected AUTH_RESPONSE message: no authentication in progress")
            conn.user = self._authenticate(P.decode_auth_response(body, flags))
            conn.authenticating = False
            conn.started = True
            conn.send(stream, op.AUTH_SUCCESS, P.encode_auth_success())
            return []
        if not conn.started:
            name = P.Opcode.NAMES.get(opcode, f"0x{opcode:02x}")
            raise P.protocol_error(f"Unexpected message {name}, expecting STARTUP or OPTIONS")
        if opcode == op.REGISTER:
            conn.events.update(P.decode_register(body, flags))
            conn.send(stream, op.READY, P.encode_ready())
            return []
        if opcode == op.QUERY:
            query, params = P.decode_query(body, flags)
            conn.consistency = params.consistency
            if params.timestamp is not None and query.lstrip()[:6].lower() != "select":
                self._note_timestamp(params.timestamp)
            result = self.engine.execute(
                query, params.values, keyspace=conn.keyspace, consistency=params.consistency,
                page_size=params.page_size, paging_state=params.paging_state,
                timestamp=params.timestamp, names=params.names, **self._as(conn),
            )  # fmt: skip
            return self._answer(conn, stream, result, params.skip_metadata)
        if opcode == op.PREPARE:
            info = self.engine.prepare(P.decode_prepare(body, flags), keyspace=conn.keyspace)
            self._prepared[info.id] = info
            conn.send(stream, op.RESULT, P.encode_prepared(info))
            return []
        if opcode == op.EXECUTE:
            pid, params = P.decode_execute(body, flags)
            conn.consistency = params.consistency
            info = self._prepared.get(pid)
            if params.timestamp is not None and info is not None and info.result_columns is None:
                self._note_timestamp(params.timestamp)
            values = self._by_position(pid, params.values, params.names)
            result = self.engine.execute_prepared(
                pid, values, keyspace=conn.keyspace, consistency=params.consistency,
                page_size=params.page_size, paging_state=params.paging_state, timestamp=params.timestamp,
                **self._as(conn),
            )  # fmt: skip
            return self._answer(conn, stream, result, params.skip_metadata)
        if opcode == op.BATCH:
            req = P.decode_batch(body, flags)
            conn.consistency = req.consistency
            if req.timestamp is not None:
                self._note_timestamp(req.timestamp)
            stmts = [self._batch_child(conn, ch) for ch in req.children]
            result = self.engine.batch(
                req.kind, stmts, keyspace=conn.keyspace, consistency=req.consistency, timestamp=req.timestamp,
                **self._as(conn),
            )  # fmt: skip
            return self._answer(conn, stream, result, False)
        name = P.Opcode.NAMES.get(opcode, f"0x{opcode:02x}")
        raise P.protocol_error(f"Unknown or unexpected request opcode {name}")

    def _answer(self, conn: _Conn, stream: int, result: Any, skip_metadata: bool) -> list[SchemaChangeResult]:
        body = P.encode_result(result, skip_metadata=skip_metadata)
        if isinstance(result, SetKeyspaceResult):
            conn.keyspace = result.keyspace
        if isinstance(result, RowsResult) and result.columns and result.columns[0].table.endswith(LOG_SUFFIX):
            self._answer_log_read(conn, stream, body, result)
            return []
        conn.send(stream, P.Opcode.RESULT, body)
        if not isinstance(result, SchemaChangeResult):
            return []
        # Scylla also announces tables changed in the same migration (a CDC log created or dropped
        # with its base); an engine may report them through ``take_schema_events()``.
        take = getattr(self.engine, "take_schema_events", None)
        return [result, *(take() if take is not None else [])]

    def _answer_log_read(self, conn: _Conn, stream: int, body: bytes, result: RowsResult) -> None:
        stats = self.log_stats
        rows = len(result.rows)
        spec = result.columns[0]
        table = f"{spec.keyspace}.{spec.table[: -len(LOG_SUFFIX)]}"
        with stats.lock:
            stats.queries += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

        def send() -> None:
            with stats.lock:
                stats.in_flight -= 1
                stats.rows += rows
                stats.rows_by_table[table] = stats.rows_by_table.get(table, 0) + rows
                stats.served.append((time.monotonic(), rows))
            if not conn.writer.is_closing():
                conn.send(stream, P.Opcode.RESULT, body)
                conn.flush()

        if self.log_read_delay > 0 and self._loop is not None:
            self._loop.call_later(self.log_read_delay, send)
        else:
            send()

    def _as(self, conn: _Conn) -> dict[str, Any]:
        """The engine call's ``user=`` argument (only for an engine with roles)."""
        return {} if self._roles is None else {"user": conn.user}

    def _authenticate(self, token: bytes) -> str:
        """The role a SASL PLAIN token logs in as (PasswordAuthenticator's error texts)."""
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise CqlError(ErrorCode.BAD_CREDENTIALS, "Malformed SASL PLAIN authentication token")
        user, password = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        if self._roles is not None and self._roles.enabled:
            return str(self._roles.login(user, password))
        if (user, password) != self.credentials:
            raise CqlError(ErrorCode.BAD_CREDENTIALS, "Username and/or password are incorrect")
        return user

    def _by_position(self, pid: bytes, values: list[Any], names: list[str] | None) -> list[Any]:
        """Reorder named EXECUTE values into bind-marker order."""
        if names is None:
            return values
        info = self._prepared.get(pid)
        if info is None:
            raise CqlError(ErrorCode.UNPREPARED, f"Prepared query with ID {pid.hex()} not found", id=pid)
        return _reorder([c.name for c in info.bind_columns], names, values)

    def _batch_child(self, conn: _Conn, ch: P.BatchChild) -> BatchStatement:
        values = ch.values
        if ch.names is not None:
            if ch.prepared_id is not None:
                values = self._by_position(ch.prepared_id, values, ch.names)
            else:
                assert ch.query is not None
                info = self.engine.prepare(ch.query, keyspace=conn.keyspace)
                self._prepared[info.id] = info
                values = _reorder([c.name for c in info.bind_columns], ch.names, values)
        return BatchStatement(query=ch.query, prepared_id=ch.prepared_id, values=values)


def _reorder(markers: list[str], names: list[str], values: list[Any]) -> list[Any]:
    by_name = dict(zip(names, values, strict=True))
    missing = [m for m in markers if m not in by_name]
    if missing:
        raise CqlError(ErrorCode.INVALID, f"No value given for bind marker(s) {', '.join(missing)}")
    extra = set(by_name) - set(markers)
    if extra:
        raise CqlError(ErrorCode.INVALID, f"Unknown bind marker name(s) {', '.join(sorted(extra))}")
    return [by_name[m] for m in markers]
