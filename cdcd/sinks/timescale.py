"""TimescaleDB destination (R-12): the PostgreSQL sink plus hypertables.

Writes are exactly ``PostgresSink``'s (COPY into a staging table, guarded ``INSERT .. ON CONFLICT``,
one transaction per batch); TimescaleDB routes each row to its chunk, so upserts, updates and
deletes work across chunks unchanged. Only the set-up differs:

``connect()``
    ``CREATE EXTENSION IF NOT EXISTS timescaledb`` (under an advisory lock: replicas race), then
    reads the extension version and ``timescaledb.license``. A server without the extension
    raises ``ConfigError`` quoting the server's reason. Hypertables need TimescaleDB >= 2.13
    (``by_range``). ``compress_after`` and ``retention`` need the TSL features (license
    ``timescale``); on an Apache-only build (license ``apache``) they are refused with a
    ``ConfigError`` naming the feature, the destination and the config key: never silently
    ignored.

``ensure_table(mapping, schema)`` for a source table listed in ``hypertables``
    * The time column must exist, be a CQL ``timestamp`` (``timestamptz``) or ``date`` (``date``),
      and be part of the primary key: TimescaleDB requires every unique index (here the upsert
      key) to include the time column. Otherwise ``SchemaMismatch`` names the table, the column
      and the actual primary key. Integer-like columns (``int``, ``bigint``, ...) and
      ``timeuuid`` are refused: integer dimensions need the unit of the integers, which a
      duration-valued ``chunk_interval`` cannot express, and an ``integer_now`` function for
      policies. For ``date`` columns ``chunk_interval`` must be whole days.
    * After the plain tables exist (``PostgresSink.ensure_table``): ``create_hypertable(..,
      by_range(col, chunk_interval), if_not_exists => true, migrate_data => true)``. An existing
      hypertable must be partitioned by time on the configured column (else ``SchemaMismatch``);
      a changed ``chunk_interval`` is applied with ``set_chunk_time_interval`` (new chunks only).
    * ``compress_after`` (TSL only): ``ALTER TABLE .. SET (timescaledb.compress,
      compress_segmentby = <partition key minus the time column>, compress_orderby = <the rest
      of the primary key>)`` unless compression is already enabled (settings of a compressed
      hypertable are never changed), then ``add_compression_policy(.., if_not_exists => true)``.
    * ``retention`` (TSL only): ``add_retention_policy(.., if_not_exists => true)``.
    * A policy that already exists keeps its interval; removing an option from the config does
      not remove the policy. With ``create_tables = false`` nothing is created or altered: the
      table must already be a hypertable on the configured column.

Static side tables (``<table>_static``), tombstone history tables (``<table>_history``) and
tables not listed in ``hypertables`` are plain PostgreSQL tables.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec

from cdcd.errors import ConfigError, SchemaMismatch, SinkUnavailable
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping
from cdcd.sinks.classify import Action, classify
from cdcd.sinks.postgres.sink import PostgresSink
from cdcd.sinks.postgres.sql import ident, layouts_for

__all__ = ["Features", "HypertablePlan", "TimescaleSink", "compression_sql", "plan_hypertable"]

MIN_VERSION = (2, 13)  # create_hypertable(.., by_range(..)) appeared in 2.13
TIME_TYPES = {"timestamp": "timestamptz", "date": "date"}
_DAY_US = 86_400_000_000

Interval = tuple[int, int, int]  # (months, days, µs): the sink's asyncpg interval codec


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """What the server's TimescaleDB can do."""

    version: str  # extversion, e.g. "2.19.3"
    license: str  # timescaledb.license: "apache" (Apache-only) or "timescale" (TSL features)

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.version)[:3])

    @property
    def tsl(self) -> bool:
        """Compression, retention policies and continuous aggregates are TSL-licensed code."""
        return self.license == "timescale"


class HypertablePlan(msgspec.Struct, frozen=True, kw_only=True):
    """The validated hypertable set-up of one mapping (pure data, built by ``plan_hypertable``)."""

    schema: str
    table: str
    time_column: str
    chunk_interval: Interval
    segment_by: tuple[str, ...]  # partition key columns except the time column
    order_by: tuple[tuple[str, str], ...]  # (column, "ASC"|"DESC"): the rest of the primary key
    compress_after: Interval | None
    retention: Interval | None

    @property
    def relation(self) -> str:
        return f"{ident(self.schema)}.{ident(self.table)}"


def _key(dest: str, source: str, option: str | None = None) -> str:
    part = source if re.fullmatch(r"[A-Za-z0-9_-]+", source) else '"' + source.replace('"', '\\"') + '"'
    return f"destinations.{dest}.hypertables.{part}" + (f".{option}" if option else "")


def _interval(seconds: float, whole_days: bool, what: str, dest: str, source: str) -> Interval:
    us = round(float(seconds) * 1_000_000)
    if us <= 0:
        raise ConfigError(f"{what} must be positive, got {seconds}s", key=_key(dest, source, what))
    if whole_days and us % _DAY_US:
        raise ConfigError(
            f"{what} must be a whole number of days for a date time column, got {seconds}s",
            key=_key(dest, source, what),
        )
    return (0, us // _DAY_US, us % _DAY_US)


def plan_hypertable(dest: str, mapping: TableMapping, schema: TableSchema, cfg: Any) -> HypertablePlan:
    """Validate ``cfg`` (a ``HypertableConfig``) against the source schema; raises SchemaMismatch
    (time column missing, of an unsupported type, or not in the primary key) or ConfigError."""
    target = mapping.target
    col_name: str = cfg.time_column
    pk = [c.name for c in schema.primary_key]
    where = f"destination {dest!r}: hypertable {target} (source {mapping.source})"
    col = next((c for c in schema.columns if c.name == col_name), None)
    if col is None:
        raise SchemaMismatch(
            f"{where}: time column {col_name!r} does not exist; columns: {', '.join(c.name for c in schema.columns)}"
        )
    if col.type.name not in TIME_TYPES:
        raise SchemaMismatch(
            f"{where}: time column {col_name!r} is CQL {col.type.cql()}; a hypertable time column must be "
            "CQL timestamp or date (integer and timeuuid time columns are not supported)"
        )
    if col_name not in pk:
        raise SchemaMismatch(
            f"{where}: time column {col_name!r} is not part of the primary key ({', '.join(pk)}); "
            "TimescaleDB needs the time column in the upsert key: make it a partition or clustering "
            "key column, or remove the table from hypertables"
        )
    days = col.type.name == "date"
    order = dict(zip((c.name for c in schema.clustering_key), schema.clustering_order, strict=False))
    segment_by = tuple(c.name for c in schema.partition_key if c.name != col_name)
    # Clustering columns in their clustering order; a time column of the partition key newest first.
    order_by = tuple((n, order.get(n, "desc").upper()) for n in pk if n not in segment_by)
    after, keep = cfg.compress_after, cfg.retention
    return HypertablePlan(
        schema=mapping.target_schema,
        table=mapping.target_table,
        time_column=col_name,
        chunk_interval=_interval(cfg.chunk_interval, days, "chunk_interval", dest, mapping.source),
        segment_by=segment_by,
        order_by=order_by,
        compress_after=None
        if after is None
        else _interval(after, days, "compress_after", dest, mapping.source),
        retention=None if keep is None else _interval(keep, days, "retention", dest, mapping.source),
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def compression_sql(plan: HypertablePlan) -> str:
    """``ALTER TABLE .. SET (timescaledb.compress, ..)``. Storage parameters cannot be bound, so the
    column lists are string literals of validated, quoted identifiers."""
    opts = ["timescaledb.compress"]
    if plan.segment_by:
        opts.append(
            f"timescaledb.compress_segmentby = {_literal(', '.join(ident(c) for c in plan.segment_by))}"
        )
    orders = ", ".join(f"{ident(c)} {d}" for c, d in plan.order_by)
    opts.append(f"timescaledb.compress_orderby = {_literal(orders)}")
    return f"ALTER TABLE {plan.relation} SET ({', '.join(opts)})"


_PRELOAD_HINT = "add timescaledb to shared_preload_libraries in the server's postgresql.conf and restart it"


class TimescaleSink(PostgresSink):
    """``[destinations.<name>] type = "timescaledb"``."""

    kind = "timescaledb"
    label = "TimescaleDB"

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self.features: Features | None = None

    def _hypertables(self) -> dict[str, Any]:
        return dict(getattr(self.config, "hypertables", None) or {})

    # -- feature detection -------------------------------------------------------------------
    async def connect(self) -> None:
        await super().connect()
        if self.features is None:
            try:
                self.features = await self._run(self._detect)
            except SinkUnavailable as exc:  # the server's reason (e.g. the library not preloaded)
                cause = exc.__cause__ or exc
                error = self._unavailable(cause, "cannot load the timescaledb extension in")
                if "must be preloaded" in str(cause):
                    error = SinkUnavailable(f"{error}; {_PRELOAD_HINT}")
                raise error from cause
        for source, cfg in self._hypertables().items():
            self._require_features(source, cfg)

    async def _detect(self, conn: asyncpg.Connection) -> Features:
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('cdcd:create extension timescaledb'))"
                )
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except asyncpg.PostgresError as exc:
            if classify(exc) is Action.RETRY:
                raise
            raise ConfigError(
                f"destination {self.name!r} (type timescaledb): the timescaledb extension is not available "
                f"in the target database: {type(exc).__name__}: {exc}",
                key=f"destinations.{self.name}",
            ) from None
        row = await conn.fetchrow(
            "SELECT extversion, current_setting('timescaledb.license', true) AS license "
            "FROM pg_extension WHERE extname = 'timescaledb'"
        )
        return Features(version=str(row["extversion"]), license=str(row["license"] or "unknown"))

    def _require_features(self, source: str, cfg: Any) -> None:
        feats = self.features
        assert feats is not None
        if feats.version_tuple < MIN_VERSION:
            raise ConfigError(
                f"destination {self.name!r}: hypertables need TimescaleDB >= "
                f"{'.'.join(map(str, MIN_VERSION))}, the server has {feats.version}",
                key=_key(self.name, source),
            )
        for option, feature in (("compress_after", "compression"), ("retention", "retention policies")):
            if getattr(cfg, option, None) is not None and not feats.tsl:
                raise ConfigError(
                    f"destination {self.name!r}: {feature} ({option}) for {source} is not available: the server "
                    f"runs TimescaleDB {feats.version} with license {feats.license!r} (TSL features need license "
                    "'timescale'); remove the option or use a server with the TSL features",
                    key=_key(self.name, source, option),
                )

    # -- tables ------------------------------------------------------------------------------
    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        cfg = self._hypertables().get(mapping.source)
        plan = None
        if cfg is not None:
            layouts_for(schema, mapping.target_schema, mapping.target_table)  # identifiers first
            plan = plan_hypertable(self.name, mapping, schema, cfg)
            if self.features is None:
                await self.connect()
            self._require_features(mapping.source, cfg)
        await super().ensure_table(mapping, schema)
        if plan is not None:
            p = plan
            await self._run(lambda conn: self._ensure_hypertable(conn, p, mapping.create))

    async def _ensure_hypertable(self, conn: asyncpg.Connection, plan: HypertablePlan, create: bool) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ident(plan.schema))
            dim = await conn.fetchrow(
                "SELECT column_name, time_interval = $3::interval AS same_interval "
                "FROM timescaledb_information.dimensions WHERE hypertable_schema = $1 AND hypertable_name = $2 "
                "AND dimension_type = 'Time' ORDER BY dimension_number LIMIT 1",
                plan.schema,
                plan.table,
                plan.chunk_interval,
            )
            target = f"{plan.schema}.{plan.table}"
            if dim is None:
                if not create:
                    raise SchemaMismatch(f"{target} is not a hypertable and create_tables is off")
                await conn.execute(
                    "SELECT create_hypertable($1::regclass, by_range($2::name, $3::interval), "
                    "if_not_exists => true, migrate_data => true)",
                    plan.relation,
                    plan.time_column,
                    plan.chunk_interval,
                )
            elif dim["column_name"] != plan.time_column:
                raise SchemaMismatch(
                    f"{target} is already a hypertable partitioned by time on {dim['column_name']!r}, "
                    f"but the configured time_column is {plan.time_column!r}"
                )
            elif create and not dim["same_interval"]:
                await conn.execute(
                    "SELECT set_chunk_time_interval($1::regclass, $2::interval)",
                    plan.relation,
                    plan.chunk_interval,
                )
            if create:
                await self._policies(conn, plan)

    @staticmethod
    async def _policies(conn: asyncpg.Connection, plan: HypertablePlan) -> None:
        """Compression and retention (TSL only; ``connect`` refused them on other servers)."""
        if plan.compress_after is not None:
            enabled = await conn.fetchval(
                "SELECT compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = $1 AND hypertable_name = $2",
                plan.schema,
                plan.table,
            )
            if not enabled:
                await conn.execute(compression_sql(plan))
            await conn.execute(
                "SELECT add_compression_policy($1::regclass, compress_after => $2::interval, if_not_exists => true)",
                plan.relation,
                plan.compress_after,
            )
        if plan.retention is not None:
            await conn.execute(
                "SELECT add_retention_policy($1::regclass, drop_after => $2::interval, if_not_exists => true)",
                plan.relation,
                plan.retention,
            )
