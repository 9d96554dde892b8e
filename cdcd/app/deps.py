"""What the daemon and ``cdcd check-config`` connect to, and how config becomes component settings.

* ``Dependencies``: one connection attempt each to Redis, Scylla and every destination's sink.
* ``check_dependencies``: connect once to each and report (``CheckResult`` per dependency).
* ``reader_config`` / ``pipeline_config`` / ``table_mapping``: ``cdcd.toml`` -> the settings of
  ``GroupReader``, ``Pipeline`` and the sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from cassandra.cluster import NoHostAvailable

from cdcd.config import Config, Destination, TableConfig, TlsConfig
from cdcd.config.endpoints import redis_endpoint, scylla_endpoint
from cdcd.errors import (
    ConfigError,
    DependencyUnavailable,
    SourceUnavailable,
    client_certificate_hint,
    describe,
    reason,
)
from cdcd.flow import BatchPolicy, CommitPolicy, PipelineConfig, RetryPolicy
from cdcd.ops import emit
from cdcd.ops.http import CheckResult
from cdcd.ops.logging import scrub
from cdcd.schema import TableSchema
from cdcd.scylla import ReaderConfig, ScyllaSession
from cdcd.sinks import Sink, TableMapping, create_sink

__all__ = [
    "Dependencies",
    "MappingFactory",
    "SinkFactory",
    "check_dependencies",
    "default_sink_factory",
    "pipeline_config",
    "plain",
    "reader_config",
    "retry_policy",
    "ssl_context",
    "table_mapping",
    "timed",
]

# (destination name, its config) -> a cdcd.sinks.Sink
SinkFactory = Callable[[str, Destination], Sink]
# (table, destination config) -> the cdcd.sinks.TableMapping handed to Sink.ensure_table / write
MappingFactory = Callable[[TableConfig, Destination], TableMapping]


# ------------------------------------------------------------------------------- dependencies
def default_sink_factory(name: str, dest: Destination) -> Sink:
    """The sink registry of ``cdcd.sinks`` (the class is chosen by ``type``)."""
    return create_sink(name, dest)


def table_mapping(table: TableConfig, dest: Destination) -> TableMapping:
    """The ``TableMapping`` of one table in one destination."""
    return TableMapping(
        source=table.source,
        target_schema=table.target_schema,
        target_table=table.target_table,
        delete=table.delete,
        create=dest.create_tables,
        staleness=table.staleness,
        version_column=table.version_column,
    )


def ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    ctx.check_hostname = tls.verify_hostname
    if tls.cert_file and tls.key_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


class Dependencies:
    """Connections to Scylla, Redis and the destinations; each ``connect_*`` is one attempt."""

    def __init__(self, cfg: Config, sink_factory: SinkFactory = default_sink_factory) -> None:
        self.cfg = cfg
        self.sink_factory = sink_factory
        self.redis: aioredis.Redis | None = None
        self.scylla: ScyllaSession | None = None
        self.sinks: dict[str, Sink] = {}

    async def connect_redis(self) -> aioredis.Redis:
        st = self.cfg.state
        url = st.redis_url.get()
        kwargs: dict[str, Any] = {
            "socket_timeout": st.connect_timeout,
            "socket_connect_timeout": st.connect_timeout,
        }
        if urllib.parse.urlsplit(url).scheme == "rediss":  # verified: the CA and the host name
            kwargs |= {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
            if st.ca_file:
                kwargs["ssl_ca_certs"] = st.ca_file
            if st.cert_file and st.key_file:
                kwargs |= {"ssl_certfile": st.cert_file, "ssl_keyfile": st.key_file}
        client = aioredis.Redis.from_url(url, **kwargs)
        try:
            await client.ping()
        except BaseException as exc:
            await client.aclose()
            if isinstance(exc, redis.exceptions.RedisError | OSError):  # ResponseError: e.g. NOAUTH
                where = redis_endpoint(url)
                said = reason(exc)
                if urllib.parse.urlsplit(url).scheme == "rediss":
                    if isinstance(exc, redis.exceptions.TimeoutError):  # a plaintext server waits for more
                        said = f"TLS: the server did not answer the TLS handshake; is TLS on at this port? ({said})"
                    elif not st.cert_file:
                        said += client_certificate_hint(said, "state")
                raise DependencyUnavailable(scrub(f"cannot connect to Redis at {where}: {said}")) from exc
            raise
        self.redis = client
        return client

    async def connect_scylla(self) -> ScyllaSession:
        src = self.cfg.source
        try:
            self.scylla = await ScyllaSession.connect(
                src.hosts,
                username=src.username,
                password=src.password.get() if src.password is not None else None,
                ssl_context=ssl_context(src.tls),
                consistency=src.consistency,
                request_timeout=src.request_timeout,
                connect_timeout=src.connect_timeout,
                local_dc=src.local_dc,
            )
        except SourceUnavailable as exc:
            said = _scylla_reason(exc)
            if src.tls.enabled and not src.tls.cert_file:
                said += client_certificate_hint(said, "source.tls")
            raise SourceUnavailable(
                scrub(f"cannot connect to Scylla at {scylla_endpoint(src.hosts)}: {said}")
            ) from exc.__cause__ or exc
        return self.scylla

    async def connect_sink(self, name: str) -> Sink:
        sink = self.sinks.get(name) or self.sink_factory(name, self.cfg.destinations[name])
        self.sinks[name] = sink
        await sink.connect()
        await sink.healthcheck()
        return sink

    async def table_schema(self, table: TableConfig) -> TableSchema:
        """The source table's schema; ConfigError when it is missing or has no CDC."""
        assert self.scylla is not None
        key = f"tables[{self.cfg.tables.index(table)}].source"
        try:
            schema = await self.scylla.table_schema(table.keyspace, table.name)
        except LookupError as exc:
            raise ConfigError(str(exc), key=key) from None
        if not schema.cdc.enabled:
            raise ConfigError(
                f"CDC is not enabled on {table.source}: "
                f"ALTER TABLE {table.source} WITH cdc = {{'enabled': true}}",
                key=key,
            )
        return schema

    async def aclose(self) -> None:
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sink.aclose(), 10)
        if self.scylla is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.scylla.aclose(), 10)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()


def _scylla_reason(exc: SourceUnavailable) -> str:
    """The driver's reason per contact point (``NoHostAvailable.errors``), else its message."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if isinstance(cause, NoHostAvailable) and isinstance(errors, Mapping) and errors:
        return "; ".join(f"{host}: {reason(err)}" for host, err in errors.items())
    return reason(cause) if cause is not None else str(exc)


async def timed(what: Awaitable[Any], limit: float) -> CheckResult:
    """Await one check within ``limit`` seconds: its answer as plain text (``plain``), or the
    error as operators read it (``describe``; secrets scrubbed)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            result = await what
    except TimeoutError:
        return CheckResult(ok=False, detail=f"no answer within {limit} s", seconds=limit)
    except Exception as exc:
        return CheckResult(ok=False, detail=scrub(describe(exc)), seconds=time.monotonic() - started)
    return CheckResult(ok=True, detail=plain(result), seconds=time.monotonic() - started)


# Column names of probe answers, as words (``SELECT release_version FROM system.local``).
_COLUMN_WORDS = {"release_version": "release"}


def plain(result: Any) -> str:
    """A probe's answer as text for /readyz and check-config: ``True``/``None`` (a PING, a
    healthcheck) -> ``"ok"``; rows (a CQL query) -> ``"release 3.0.8"``; text as it is."""
    if result is None or result is True or result == "":
        return "ok"
    if isinstance(result, str):
        return result
    if isinstance(result, list | tuple) and all(isinstance(r, Mapping) for r in result):
        if not result:
            return "ok (no rows)"
        return "; ".join(
            ", ".join(f"{_COLUMN_WORDS.get(k, k.replace('_', ' '))} {v}" for k, v in row.items())
            for row in result
        )
    return str(result)


async def check_dependencies(
    cfg: Config, *, limit: float = 15.0, sink_factory: SinkFactory = default_sink_factory
) -> list[tuple[str, CheckResult]]:
    """Connect once to Redis, Scylla (and read every table's schema) and each destination."""
    deps = Dependencies(cfg, sink_factory)
    out: list[tuple[str, CheckResult]] = []
    try:

        async def redis_info() -> str:
            client = await deps.connect_redis()
            policy: Any = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
            if isinstance(policy, bytes):
                policy = policy.decode()
            return f"PING ok; maxmemory-policy {policy} (noeviction advised)"

        out.append(("redis", await timed(redis_info(), limit)))

        async def scylla_info() -> str:
            session = await deps.connect_scylla()
            nodes = len(session.cluster.metadata.all_hosts())
            return f"connected to {', '.join(cfg.source.hosts)} ({nodes} nodes)"

        scylla = await timed(scylla_info(), limit)
        out.append(("scylla", scylla))
        for table in cfg.tables:
            if not scylla.ok:
                out.append((f"table {table.source}", CheckResult(ok=False, detail="Scylla unreachable")))
                continue

            async def table_info(t: TableConfig = table) -> str:
                schema = await deps.table_schema(t)
                return f"CDC enabled (ttl {schema.cdc.ttl} s, preimage {schema.cdc.preimage})"

            out.append((f"table {table.source}", await timed(table_info(), limit)))
        for name, dest in cfg.destinations.items():

            async def sink_info(n: str = name) -> str:
                sink = await deps.connect_sink(n)
                probe = getattr(sink, "missing_grants", None)
                if probe is not None:
                    mappings = [
                        table_mapping(t, cfg.destinations[n]) for t in cfg.tables if n in t.destinations
                    ]
                    if grants := await probe(mappings):
                        statements = "; ".join(grants)
                        raise DependencyUnavailable(
                            f"privileges missing; run as an owner or superuser: {statements};"
                        )
                return "connect and healthcheck ok"

            out.append((f"destination {name} ({dest.kind})", await timed(sink_info(), limit)))
    finally:
        await deps.aclose()
    for dep, result in out:
        emit.dependency_checked(dependency=dep, ok=result.ok, detail=result.detail, seconds=result.seconds)
    return out


def reader_config(cfg: Config) -> ReaderConfig:
    src = cfg.source
    return ReaderConfig(
        confidence_window_s=src.confidence_window,
        window_s=src.window,
        max_window_s=src.max_window,
        poll_interval_s=src.poll_interval,
        generation_poll_s=src.generation_poll,
        fetch_size=src.fetch_size,
        consistency=src.consistency,
        retry_initial_s=cfg.pipeline.retry.initial,
        retry_max_s=cfg.pipeline.retry.max,
    )


def retry_policy(cfg: Config) -> RetryPolicy:
    """``[pipeline.retry]``: backoff of writes, state updates and source re-opens."""
    r = cfg.pipeline.retry
    return RetryPolicy(initial=r.initial, max=r.max, multiplier=r.multiplier, max_attempts=r.max_attempts)


def pipeline_config(cfg: Config, dest: Destination) -> PipelineConfig:
    p = cfg.pipeline
    batch = dest.batch(p.batch)
    return PipelineConfig(
        batch=BatchPolicy(max_rows=batch.max_rows, max_bytes=batch.max_bytes, max_wait=batch.max_wait),
        retry=retry_policy(cfg),
        commit=CommitPolicy(every_s=cfg.state.checkpoint_interval, every_events=cfg.state.checkpoint_every),
        queue_size=p.queue_size,
        max_in_flight=p.max_in_flight,
        shutdown_timeout=p.shutdown_timeout,
        max_queue_entries=cfg.validation.max_entries,
    )
