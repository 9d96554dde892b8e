"""The emulator's engine: implements ``api.Engine`` (parse -> plan -> storage, with CDC).

Write path: statement(s) -> ``model.PartitionMutation`` list (``engine_write``) -> for CDC-enabled
tables ``cdc.CdcLog.transform(base, log, mutations, read_row)`` BEFORE applying -> base and log
mutations applied to storage together (nothing is applied if the transform raises).
``apply_mutations`` is the public entry for that path (used by ``bulk``).

Read path: ``engine_select``. DDL: ``engine_ddl``. System tables: ``systables``. Roles and
permissions: ``auth`` (``execute``/``execute_prepared``/``batch`` take the connection's login
role as ``user``; ``None``, the default, is an internal caller and is never checked).
Clock: ``clock()`` (seconds since epoch, default ``time.time``) plus ``advance_clock`` offset.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.scylla_emulator import engine_ddl, systables
from tests.scylla_emulator.api import (
    UNSET,
    BatchStatement,
    ColumnSpec,
    CqlError,
    ErrorCode,
    PreparedInfo,
    Result,
    RowsResult,
    SchemaChangeResult,
    SetKeyspaceResult,
    VoidResult,
)
from tests.scylla_emulator.auth import Auth
from tests.scylla_emulator.catalog import Catalog, TableRt
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cql import parse
from tests.scylla_emulator.cqltypes_util import CType, sort_key_fn
from tests.scylla_emulator.engine_bind import Terms, collect_specs
from tests.scylla_emulator.engine_select import (
    Plan,
    _plan_selectors,
    multicell_value,
    plan_select,
    run_select,
)
from tests.scylla_emulator.engine_write import Writer, WriteSpec, merge_mutations
from tests.scylla_emulator.model import AtomicCell, PartitionMutation, TableDef
from tests.scylla_emulator.storage import NO_TS, CollCells, apply, live_cells, row_is_live

try:  # EMU-CDC's modules; the base write path works without them
    from tests.scylla_emulator.cdc import LOG_SUFFIX, CdcLog
except ImportError:  # pragma: no cover
    CdcLog = None  # type: ignore[assignment,misc]
    LOG_SUFFIX = "_scylla_cdc_log"
from tests.scylla_emulator.tablets import Tablets

try:
    from tests.scylla_emulator.generations import Generations
except ImportError:  # pragma: no cover
    Generations = None  # type: ignore[assignment,misc]

__all__ = ["EmulatorEngine"]

T_BOOL = CType("boolean")
T_INT = CType("int")
T_BIGINT = CType("bigint")
T_DURATION = CType("duration")
MAX_TTL = 630720000
_ROLE_STATEMENTS = (A.CreateRole, A.AlterRole, A.DropRole, A.GrantPermissions, A.RevokePermissions)


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


class _Prepared:
    __slots__ = ("keyspace", "n", "pk_idx", "query", "result_cols", "specs", "stmt", "version")

    def __init__(self, query: str, keyspace: str | None, stmt: Any, n: int) -> None:
        self.query = query
        self.keyspace = keyspace
        self.stmt = stmt
        self.n = n
        self.specs: list[ColumnSpec] = []
        self.pk_idx: list[int] = []
        self.result_cols: list[ColumnSpec] | None = None
        self.version: Any = None


class EmulatorEngine:
    """A single-node Scylla with CDC, in memory. See the module docstring."""

    def __init__(
        self,
        *,
        address: str = "127.0.0.1",
        port: int = 9042,
        vnodes: int = 16,
        shards: int = 2,
        clock: Callable[[], float] | None = None,
        tablets: bool = False,
        tablet_count: int = 4,
    ) -> None:
        self.address = address
        self.port = port
        self.shards = shards
        self._clock = clock or time.time
        self._offset = 0.0
        self._last_ts = 0
        self.catalog = Catalog()
        self.writer = Writer(self.now_us, self._current)
        self._parse_cache: dict[str, tuple[Any, int]] = {}
        self._prepared: dict[bytes, _Prepared] = {}
        self._log_keys: dict[int, tuple[TableRt, Callable[[tuple[Any, ...]], Any]]] = {}
        self.schema_events: list[SchemaChangeResult] = []
        if Generations is None:
            raise RuntimeError("tests/scylla_emulator/generations.py is missing")
        self.generations = Generations(vnodes=vnodes, shards=shards, now_ms=self.now_ms)
        self.cdc = CdcLog(self.generations, self.now_us) if CdcLog is not None else None
        # Tablet keyspaces (tablets.py): new keyspaces get tablets unless created with
        # tablets = {'enabled': false} when ``tablets_default`` (Scylla's tablets_mode_for_new_keyspaces).
        self.tablets_default = tablets
        self.tablets = Tablets(now_ms=self.now_ms, default_count=tablet_count)
        if self.cdc is not None:
            self.cdc.tablets = self.tablets
        self.auth = Auth(self._resource_exists, lambda: systables.refresh_roles(self))
        systables.install(self)
        self.apply_mutations(self.generations.description_mutations(), cdc=False)

    # ------------------------------------------------------------------------------ clock
    def now_us(self) -> int:
        return int((self._clock() + self._offset) * 1_000_000)

    def now_ms(self) -> int:
        return self.now_us() // 1000

    def advance_clock(self, seconds: float) -> None:
        """Move the engine's clock forward (TTL expiry, generation switches)."""
        self._offset += seconds

    def server_timestamp(self) -> int:
        """A strictly increasing write timestamp (µs) from the clock."""
        ts = self.now_us()
        if ts <= self._last_ts:
            ts = self._last_ts + 1
        self._last_ts = ts
        return ts

    def take_schema_events(self) -> list[SchemaChangeResult]:
        """Extra schema-change events of the last DDL (e.g. the CDC log table created/dropped with its
        base); the protocol pushes them after the DDL's own result."""
        ev, self.schema_events = self.schema_events, []
        return ev

    # ------------------------------------------------------------------------------ api.Engine
    def supported_options(self) -> dict[str, list[str]]:
        """SUPPORTED map. ``SCYLLA_SHARD`` is "0" here: the protocol should set it per connection."""
        return {
            "CQL_VERSION": ["3.3.1"],
            "COMPRESSION": [],
            "SCYLLA_SHARD": ["0"],
            "SCYLLA_NR_SHARDS": [str(self.shards)],
            "SCYLLA_PARTITIONER": ["org.apache.cassandra.dht.Murmur3Partitioner"],
            "SCYLLA_SHARDING_ALGORITHM": ["biased-token-round-robin"],
            "SCYLLA_SHARDING_IGNORE_MSB": ["12"],
        }

    def _parse(self, query: str) -> tuple[Any, int]:
        hit = self._parse_cache.get(query)
        if hit is None:
            hit = parse(query)
            if len(self._parse_cache) > 4096:
                self._parse_cache.clear()
            self._parse_cache[query] = hit
        return hit

    def execute(
        self,
        query: str,
        values: list[Any],
        *,
        keyspace: str | None,
        consistency: int = 1,
        page_size: int | None = None,
        paging_state: bytes | None = None,
        timestamp: int | None = None,
        names: list[str] | None = None,
        user: str | None = None,
    ) -> Result:
        stmt, n = self._parse(query)
        values = list(values or [])
        if n != len(values) and not (names and n):
            raise inv(f"There were {n} markers(?) in CQL but {len(values)} bound variables")
        terms = Terms(values, names, None, self.now_us)
        return self._run(stmt, terms, keyspace, page_size, paging_state, timestamp, user)

    def execute_decoded(
        self,
        query: str,
        values: list[Any] | None = None,
        *,
        keyspace: str | None = None,
        page_size: int | None = None,
        paging_state: bytes | None = None,
        timestamp: int | None = None,
    ) -> Result:
        """Like ``execute`` but bind values are Python values (tests, bulk)."""
        stmt, n = self._parse(query)
        values = list(values or [])
        if n != len(values):
            raise inv(f"There were {n} markers(?) in CQL but {len(values)} bound variables")
        terms = Terms(values, None, None, self.now_us, decoded=True)
        return self._run(stmt, terms, keyspace, page_size, paging_state, timestamp)

    def prepare(self, query: str, *, keyspace: str | None) -> PreparedInfo:
        stmt, n = self._parse(query)
        pid = hashlib.md5(((keyspace or "") + "\x00" + query).encode()).digest()
        p = _Prepared(query, keyspace, stmt, n)
        self._refresh_prepared(p)
        self._prepared[pid] = p
        return PreparedInfo(pid, p.specs, p.pk_idx, p.result_cols)

    def invalidate_prepared(self, keyspace: str, tables: set[str | None] | None) -> None:
        """Forget the prepared statements reading or writing ``keyspace``'s ``tables`` (all of the
        keyspace's when None): EXECUTE then answers UNPREPARED, as Scylla does after a DDL."""
        for pid, p in list(self._prepared.items()):
            st = p.stmt
            if not isinstance(st, A.Insert | A.Update | A.Delete | A.Select):
                continue
            if (st.keyspace or p.keyspace) == keyspace and (tables is None or st.table in tables):
                del self._prepared[pid]

    def _refresh_prepared(self, p: _Prepared) -> None:
        if p.version == self.catalog.schema_version:
            return
        if isinstance(p.stmt, A.Insert | A.Update | A.Delete | A.Select):
            self.catalog.table(p.stmt.keyspace or p.keyspace, p.stmt.table)  # must exist
        p.specs, p.pk_idx = collect_specs(p.stmt, p.n, self.catalog, p.keyspace)
        p.result_cols = None
        if isinstance(p.stmt, A.Select):
            rt = self.catalog.table(p.stmt.keyspace or p.keyspace, p.stmt.table)
            plan = Plan(rt)
            _plan_selectors(plan, rt, p.stmt)
            p.result_cols = plan.columns
        p.version = self.catalog.schema_version

    def execute_prepared(
        self,
        prepared_id: bytes,
        values: list[Any],
        *,
        keyspace: str | None,
        consistency: int = 1,
        page_size: int | None = None,
        paging_state: bytes | None = None,
        timestamp: int | None = None,
        user: str | None = None,
    ) -> Result:
        p = self._prepared.get(prepared_id)
        if p is None:
            raise CqlError(
                ErrorCode.UNPREPARED, f"Prepared query with ID {prepared_id.hex()} not found", id=prepared_id
            )
        if len(values) != p.n:
            raise inv(f"There were {p.n} markers(?) in CQL but {len(values)} bound variables")
        terms = Terms(list(values), None, None, self.now_us)
        return self._run(p.stmt, terms, p.keyspace or keyspace, page_size, paging_state, timestamp, user)

    def batch(
        self,
        kind: int,
        statements: list[BatchStatement],
        *,
        keyspace: str | None,
        consistency: int = 1,
        timestamp: int | None = None,
        user: str | None = None,
    ) -> Result:
        items: list[tuple[Any, Terms]] = []
        for bs in statements:
            if bs.prepared_id is not None:
                p = self._prepared.get(bs.prepared_id)
                if p is None:
                    raise CqlError(
                        ErrorCode.UNPREPARED,
                        f"Prepared query with ID {bs.prepared_id.hex()} not found",
                        id=bs.prepared_id,
                    )
                stmt, ks = p.stmt, p.keyspace or keyspace
            else:
                stmt, _ = self._parse(bs.query or "")
                ks = keyspace
            if not isinstance(stmt, A.Insert | A.Update | A.Delete):
                raise inv(
                    "Invalid statement in batch: only UPDATE, INSERT and DELETE statements are allowed."
                )
            if user is not None:
                self.auth.authorize(user, stmt, ks)
            items.append((self._qualify(stmt, ks), Terms(list(bs.values), None, None, self.now_us)))
        return self._write(items, timestamp, None, batch_kind=("logged", "unlogged", "counter")[kind])

    # ------------------------------------------------------------------------------ dispatch
    @staticmethod
    def _qualify(stmt: Any, ks: str | None) -> Any:
        if getattr(stmt, "keyspace", "x") is None and ks is not None:
            import copy

            stmt = copy.copy(stmt)
            stmt.keyspace = ks
        return stmt

    def _run(  # noqa: PLR0917
        self,
        stmt: Any,
        terms: Terms,
        keyspace: str | None,
        page_size: int | None,
        paging_state: bytes | None,
        timestamp: int | None,
        user: str | None = None,
    ) -> Result:
        if user is not None:
            self.auth.authorize(user, stmt, keyspace)
        if isinstance(stmt, A.Select):
            return self._select(self._qualify(stmt, keyspace), terms, page_size, paging_state)
        if isinstance(stmt, A.Insert | A.Update | A.Delete):
            return self._write([(self._qualify(stmt, keyspace), terms)], timestamp, None, None)
        if isinstance(stmt, A.Batch):
            if stmt.using.ttl is not None:
                raise inv("Global TTL on the BATCH statement is not supported.")
            bts = None
            if stmt.using.timestamp is not None:
                bts = terms.value(stmt.using.timestamp, T_BIGINT)
            items = [(self._qualify(s, keyspace), terms) for s in stmt.statements]
            return self._write(items, timestamp, bts, batch_kind=stmt.kind)
        if isinstance(stmt, A.Use):
            self.catalog.keyspace(stmt.keyspace)
            return SetKeyspaceResult(stmt.keyspace)
        if isinstance(stmt, _ROLE_STATEMENTS):
            return self.auth.execute(user, stmt, keyspace)
        result = engine_ddl.execute(self, stmt, keyspace)
        if isinstance(result, SchemaChangeResult) and result.target in ("KEYSPACE", "TABLE"):
            resource = (result.keyspace,) if result.name is None else (result.keyspace, result.name)
            if result.change_type == "CREATED":
                self.auth.created(user, resource)
            elif result.change_type == "DROPPED":
                self.auth.dropped(resource)
                if result.name is not None:
                    self.auth.dropped((result.keyspace, result.name + LOG_SUFFIX))
        return result

    def _resource_exists(self, r: tuple[str, ...]) -> bool:
        if not r:
            return True
        if len(r) == 1:
            return r[0] in self.catalog.keyspaces
        return self.catalog.find_table(r[0], r[1]) is not None

    # ------------------------------------------------------------------------------ reads
    def _select(
        self, st: A.Select, terms: Terms, page_size: int | None, paging_state: bytes | None
    ) -> Result:
        rt = self.catalog.table(st.keyspace, st.table)
        if st.using.timeout is not None:
            terms.value(st.using.timeout, T_DURATION)
        plan = plan_select(rt, st, terms)
        if page_size is not None and page_size <= 0:
            page_size = None
        return run_select(plan, self.now_us(), page_size, paging_state)

    def _current(self, rt: TableRt, pk: tuple[Any, ...], ck: tuple[Any, ...] | None) -> dict[str, Any] | None:
        """Live row in read_row form (multi-cell columns as [(cell_key, value)] in cell order)."""
        part = rt.store.partitions.get(rt.pk_bytes(pk))
        if part is None:
            return None
        now = self.now_us()
        out: dict[str, Any] = dict(zip(rt.pk_names, pk, strict=True))
        if ck is None or (not rt.ck_names and ck == ()):
            if ck is None:
                row = part.static
                names = rt.statics
                if row is None:
                    return None
                dts = max(part.tomb, row.tomb)
            else:
                key = rt.ck_key(())
                row = part.rows.get(key)
                if row is None:
                    return None
                names = rt.regulars
                dts = part.deletion_for(key, row)
                if not row_is_live(row, dts, now):
                    return None
        else:
            key = rt.ck_key(ck)
            row = part.rows.get(key)
            if row is None:
                return None
            dts = part.deletion_for(key, row)
            if not row_is_live(row, dts, now):
                return None
            out.update(zip(rt.ck_names, ck, strict=True))
            names = rt.regulars
        any_live = False
        for name in names:
            c = row.cells.get(name)
            if c is None:
                continue
            if isinstance(c, CollCells):
                cells = live_cells(c, dts, now)
                if cells:
                    t = rt.types[name]
                    kt = t.params[0] if t.name in ("set", "map") else None
                    if t.name == "list":
                        from tests.scylla_emulator.cqltypes_util import timeuuid_key

                        cells.sort(key=lambda kv: timeuuid_key(kv[0]))
                    elif kt is not None:
                        k = sort_key_fn(kt)
                        cells.sort(key=lambda kv: k(kv[0]))
                    else:
                        cells.sort(key=lambda kv: kv[0])
                    out[name] = cells
                    any_live = True
            elif c.live and c.ts > dts and (c.expiry is None or c.expiry > now):
                out[name] = c.value
                any_live = True
        if ck is None and not any_live:
            return None
        return out

    def read_row(
        self, base: TableDef, pk: tuple[Any, ...], ck: tuple[Any, ...] | None
    ) -> dict[str, Any] | None:
        """``cdc.ReadRow``: the current live row (keys + that row's own columns) or None."""
        rt = self.catalog.find_table(base.keyspace, base.name)
        if rt is None:
            return None
        return self._current(rt, pk, ck)

    # ------------------------------------------------------------------------------ writes
    def _write(
        self,
        items: list[tuple[Any, Terms]],
        frame_ts: int | None,
        batch_ts: int | None,
        batch_kind: str | None,
    ) -> Result:
        specs: list[WriteSpec] = []
        conditional = [
            st
            for st, _ in items
            if getattr(st, "if_not_exists", False)
            or getattr(st, "if_exists", False)
            or getattr(st, "conditions", None)
        ]
        now_ts: int | None = None
        for st, terms in items:
            rt = self.catalog.table(st.keyspace, st.table)
            self._check_writable(rt, st, batch_kind)
            ts: Any = None
            if st.using.timestamp is not None:
                if batch_kind is not None and batch_ts is not None:
                    raise inv("Timestamp must be set either on BATCH or individual statements")
                ts = terms.value(st.using.timestamp, T_BIGINT)
                if ts is None or ts is UNSET:
                    raise inv("Invalid null value of timestamp")
                if conditional:
                    raise inv("Cannot provide custom timestamp for conditional updates")
            if ts is None:
                ts = batch_ts if batch_ts is not None else frame_ts
            if ts is None:
                if now_ts is None:
                    now_ts = self.server_timestamp()
                ts = now_ts
            if st.using.timeout is not None:
                terms.value(st.using.timeout, T_DURATION)
            if isinstance(st, A.Delete):
                if st.using.ttl is not None:
                    raise inv("TTL is not supported on DELETE statements")
                specs.append(self.writer.delete(rt, st, terms, ts))
                continue
            ttl: int | None = rt.d.default_ttl or None
            if st.using.ttl is not None:
                v = terms.value(st.using.ttl, T_INT)
                if v is None or v is UNSET:
                    v = 0
                if v < 0:
                    raise inv(f"A TTL must be greater or equal to 0, but was {v}")
                if v > MAX_TTL:
                    raise inv(f"ttl is too large. requested ({v}) maximum ({MAX_TTL})")
                ttl = v or None
            if isinstance(st, A.Insert):
                if rt.keyspace == "emulator" and rt.name == "control":
                    return self._control(rt, st, terms)
                specs.append(self.writer.insert(rt, st, terms, ts, ttl))
            else:
                specs.append(self.writer.update(rt, st, terms, ts, ttl))
        lwt: Result | None = None
        if conditional:
            applied, lwt = self._check_conditions(items, specs)
            if not applied:
                return lwt
        muts = [m for s in specs for m in s.mutations]
        if len(items) > 1:
            cat = self.catalog
            muts = merge_mutations(
                muts,
                lambda m: (m.keyspace, m.table, cat.table(m.keyspace, m.table).pk_bytes(m.partition_key)),
                lambda ks, t, ck: cat.table(ks, t).ck_key(ck),
            )
        self.apply_mutations(muts)
        if lwt is not None:
            return lwt
        return VoidResult()

    def _check_writable(self, rt: TableRt, st: Any, batch_kind: str | None) -> None:
        ks = self.catalog.keyspaces[rt.keyspace]
        if ks.system and not (rt.keyspace == "emulator" and rt.name == "control"):
            raise CqlError(ErrorCode.UNAUTHORIZED, f"{rt.keyspace} keyspace is not user-modifiable.")
        if rt.is_counter and batch_kind not in (None, "counter"):
            raise inv(
                "Cannot include a counter statement in a logged batch"
                if batch_kind == "logged"
                else "Counter and non-counter mutations cannot exist in the same batch"
            )
        if not rt.is_counter and batch_kind == "counter":
            raise inv("Cannot include non-counter statement in a counter batch")
        if rt.is_counter and getattr(st.using, "ttl", None) is not None:
            raise inv("Cannot provide custom TTL for counter updates")

    def _check_conditions(
        self, items: list[tuple[Any, Terms]], specs: list[WriteSpec]
    ) -> tuple[bool, RowsResult]:
        from tests.scylla_emulator.engine_lwt import check_conditions

        return check_conditions(self, items, specs)

    def _control(self, rt: TableRt, st: A.Insert, terms: Terms) -> Result:
        vals = {c: terms.value(t, rt.types[c]) for c, t in zip(st.columns, st.values, strict=True)}
        cmd = vals.get("command")
        arg = vals.get("value")
        if not isinstance(cmd, str):
            raise inv("emulator.control needs a command")
        try:
            if cmd == "new_generation" or cmd.startswith("new_generation:"):
                vnodes = int(cmd.split(":", 1)[1]) if ":" in cmd else None
                self.generations.new_generation(int(arg or 0), vnodes)
                self.apply_mutations(self.generations.description_mutations(), cdc=False)
                systables.refresh_local(self)
            elif cmd == "advance_clock":
                self.advance_clock(float(arg or 0))
            elif cmd.startswith("new_stream_set:"):
                self._new_stream_set(cmd.split(":", 2)[1:], arg)
            else:
                raise inv(
                    f"Unknown emulator control command {cmd!r} (known: new_generation, "
                    f"new_generation:<vnodes>, new_stream_set:<ks>.<table>[:<tablets>], advance_clock)"
                )
        except ValueError as e:
            raise inv(f"Bad argument for emulator control command {cmd!r}: {arg!r}") from e
        systables.put_row(self, rt, {"command": cmd, "value": arg})
        return VoidResult()

    def _new_stream_set(self, parts: list[str], arg: str | None) -> None:
        """``new_stream_set:<ks>.<table>[:<tablets>]`` = ``<ms from now>``: split/merge a CDC table
        of a tablet keyspace to ``<tablets>`` (default: its current count, i.e. only new ids)."""
        ks, dot, table = parts[0].partition(".")
        streams = self.tablets.get(ks, table) if dot else None
        if streams is None:
            raise inv(
                f"new_stream_set: {parts[0]!r} is not a CDC-enabled table of a tablet keyspace "
                f"(expected new_stream_set:<keyspace>.<table>[:<tablets>])"
            )
        count = int(parts[1]) if len(parts) > 1 else streams.tablet_count
        if count < 1:
            raise ValueError(count)
        self.tablets.resize(ks, table, count, None if arg in (None, "") else int(arg))
        systables.refresh_cdc_streams(self)

    def _rt(self, ks: str, name: str) -> TableRt:
        """``catalog.table`` (same errors), without its call chain for existing tables."""
        k = self.catalog.keyspaces.get(ks)
        rt = None if k is None else k.tables.get(name)
        return self.catalog.table(ks, name) if rt is None else rt

    def apply_mutations(
        self, muts: list[PartitionMutation], *, cdc: bool = True, pk_bytes: list[bytes] | None = None
    ) -> None:
        """Apply base mutations, after computing the CDC log mutations of CDC-enabled tables.

        ``pk_bytes``: the serialized partition keys of ``muts`` (same order) when the caller already
        has them (``bulk``); they must equal ``rt.pk_bytes(m.partition_key)``."""
        if len(muts) == 1:
            m = muts[0]
            rt = self._rt(m.keyspace, m.table)
            opts = rt.d.cdc
            if cdc and opts is not None and opts.enabled:
                log_rt = self._log_rt(rt)
                log_muts = self.cdc.transform(rt.d, log_rt.d, muts, self.read_row)  # type: ignore[union-attr]
                now = self.now_us()
                self._apply_one(m, now, rt, pk_bytes[0] if pk_bytes else None)
                for lm in log_muts:
                    self._apply_one(lm, now, log_rt)
            else:
                self._apply_one(m, self.now_us(), rt, pk_bytes[0] if pk_bytes else None)
            return
        log_muts = []
        if cdc:
            by_table: dict[tuple[str, str], list[PartitionMutation]] = {}
            for m in muts:
                by_table.setdefault((m.keyspace, m.table), []).append(m)
            for (ks, name), pms in by_table.items():
                rt = self._rt(ks, name)
                opts = rt.d.cdc
                if opts is None or not opts.enabled:
                    continue
                log_rt = self._log_rt(rt)
                log_muts.extend(self.cdc.transform(rt.d, log_rt.d, pms, self.read_row))  # type: ignore[union-attr]
        now = self.now_us()
        for i, m in enumerate(muts):
            self._apply_one(m, now, None, pk_bytes[i] if pk_bytes else None)
        for m in log_muts:
            self._apply_one(m, now)

    def _log_rt(self, rt: TableRt) -> TableRt:
        log_rt = self.catalog.find_table(rt.keyspace, rt.name + LOG_SUFFIX)
        if self.cdc is None or log_rt is None:
            raise CqlError(ErrorCode.SERVER_ERROR, "CDC is enabled but the emulator's cdc module is missing")
        return log_rt

    def _apply_one(
        self, m: PartitionMutation, now: int, rt: TableRt | None = None, pkb: bytes | None = None
    ) -> None:
        if rt is None:
            rt = self._rt(m.keyspace, m.table)
        pk = m.partition_key
        if pkb is None:
            if rt.is_log and len(pk) == 1 and type(pk[0]) is bytes:
                pkb = pk[0]  # blob serialization is the identity
            else:
                pkb = rt.pk_bytes(pk)
        ck_key = rt.ck_key
        if rt.is_log:
            fast = self._log_keys.get(id(rt))
            if fast is None or fast[0] is not rt:
                if len(self._log_keys) > 256:  # every DDL makes new TableRt objects
                    self._log_keys.clear()
                fast = self._log_keys[id(rt)] = (rt, log_ck_key(rt))
            ck_key = fast[1]
        apply(rt.store, m, pkb, rt.token_of, ck_key, rt.prefix_key, now)

    # ------------------------------------------------------------------------------ helpers for tests
    def table(self, ks: str, name: str) -> TableRt:
        return self.catalog.table(ks, name)


_M64 = 0xFFFFFFFFFFFFFFFF
_X80 = 0x8080808080808080


def log_ck_key(rt: TableRt) -> Callable[[tuple[Any, ...]], Any]:
    """``rt.ck_key`` of a CDC log table ((cdc$time, cdc$batch_seq_no)) computed without its
    generic per-component calls; equal to ``rt.ck_key`` for every key (``cqltypes_util.timeuuid_key``
    then the int itself)."""
    generic = rt.ck_key
    if [(c.type, c.clustering_order) for c in rt.ck] != [("timeuuid", "asc"), ("int", "asc")]:
        return generic

    def key(ck: tuple[Any, ...]) -> Any:
        if len(ck) != 2 or type(ck[0]) is not uuid.UUID:
            return generic(ck)
        i = ck[0].int
        time = (((i >> 64) & 0x0FFF) << 48) | (((i >> 80) & 0xFFFF) << 32) | (i >> 96)
        return ((time, (i & _M64) ^ _X80), ck[1])

    return key


def row_value(rt: TableRt, name: str, v: Any) -> Any:
    """Read_row value -> the value SELECT shows."""
    t = rt.types[name]
    if t.multicell and isinstance(v, list):
        return multicell_value(t, list(v))
    return v


_ = (NO_TS, AtomicCell)
