"""PostgreSQL destination (R-10): the reference sink.

Per ``write()``: ONE transaction. The batch is folded per row (pg_fold.py); for each segment the
row plans are COPYed (binary) into a temporary staging table, then applied with one
``INSERT .. SELECT .. ON CONFLICT (pk) DO UPDATE .. WHERE t._cdc_write_time < excluded._cdc_write_time``
per set of carried columns, so partial updates touch only their columns and an older or replayed
event never overwrites a newer row. Row deletes join the staging table; partition and range
deletes are single guarded statements. ``delete = "soft"`` keeps rows with ``_cdc_deleted``;
``"tombstone"`` deletes and appends to ``<table>_history`` (unique by CDC position: replays add
nothing).

Static columns live in ``<table>_static`` (one row per partition), because they belong to the
partition, not to its rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from cdcd.errors import BadRows, SchemaMismatch, SinkUnavailable
from cdcd.events import ChangeEvent, CqlDuration, Op
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping, WriteOutcome
from cdcd.sinks.classify import Action, classify
from cdcd.sinks.pg_fold import RowPlan, Segment, TableCodec, fold, resolve
from cdcd.sinks.pg_sql import (
    DELETED,
    DELETED_AT,
    MARKER,
    WRITE_TIME,
    TargetLayout,
    column_defs,
    history_ddl,
    ident,
    layouts_for,
    lexicographic,
    qualified,
    table_ddl,
)
from cdcd.sinks.pg_types import JSON_DECODER, JSON_ENCODER, contains_nul, json_value, pg_type

__all__ = ["PostgresSink"]

_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _date_enc(d: dt.date) -> tuple[int]:
    return (d.toordinal() - _PG_EPOCH_DATE.toordinal(),)


def _date_dec(t: tuple[int]) -> dt.date:
    return dt.date.fromordinal(t[0] + _PG_EPOCH_DATE.toordinal())


def _ts_enc(v: dt.datetime) -> tuple[int]:
    delta = v - _PG_EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)


def _ts_dec(t: tuple[int]) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=t[0])


_MAX_PARAMS = 30000


class _Table:
    """Everything the sink knows about one mapping: layouts, converters, statement cache."""

    def __init__(self, mapping: TableMapping, schema: TableSchema) -> None:
        self.mapping = mapping
        self.schema = schema
        self.main, self.static = layouts_for(schema, mapping.target_schema, mapping.target_table)
        self.codec = TableCodec(schema.columns, self.main, self.static)
        self.history = qualified(mapping.target_schema, mapping.target_table + "_history")
        self.sql: dict[Any, str] = {}


class _Probe(Exception):
    """Raised inside a transaction to roll a trial apply back (bisection)."""


class PostgresSink:
    """``[destinations.<name>] type = "postgres"``."""

    kind = "postgres"

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._tables: dict[tuple[str, str], _Table] = {}
        self._staged: set[tuple[int, str]] = set()  # (backend pid, staging table) created

    # -- lifecycle ---------------------------------------------------------------------------
    def _dsn(self) -> str:
        dsn = getattr(self.config, "dsn", None)
        if dsn:
            return str(dsn.get() if hasattr(dsn, "get") else dsn)
        path = getattr(self.config, "dsn_file", None)
        if path:
            return Path(path).read_text().strip()
        raise SchemaMismatch(f"destination {self.name!r}: no dsn configured")

    async def connect(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn(),
                min_size=1,
                max_size=int(getattr(self.config, "pool_size", 4)),
                timeout=float(getattr(self.config, "connect_timeout", 10.0)),
                command_timeout=float(getattr(self.config, "command_timeout", 60.0)),
                init=self._init_connection,
            )
        except Exception as exc:
            if classify(exc) is Action.FATAL and not isinstance(exc, asyncpg.PostgresError):
                raise
            raise SinkUnavailable(f"{self.name}: cannot connect to PostgreSQL: {type(exc).__name__}") from exc

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        # asyncpg's default codecs turn date.min/max and datetime.min into ±infinity; the tuple
        # codecs (days / µs since 2000-01-01) keep 0001-01-01 and 9999-12-31 exact.
        await conn.set_type_codec(
            "date", schema="pg_catalog", encoder=_date_enc, decoder=_date_dec, format="tuple"
        )
        await conn.set_type_codec(
            "timestamptz", schema="pg_catalog", encoder=_ts_enc, decoder=_ts_dec, format="tuple"
        )
        await conn.set_type_codec(
            "jsonb",
            schema="pg_catalog",
            # Binary jsonb is a version byte (1) followed by the JSON text; COPY needs binary.
            encoder=lambda v: b"\x01" + JSON_ENCODER.encode(v),
            decoder=lambda b: JSON_DECODER.decode(b[1:]),
            format="binary",
        )
        await conn.set_type_codec(
            "interval",
            schema="pg_catalog",
            encoder=lambda v: v if isinstance(v, tuple) else (v.months, v.days, v.nanoseconds // 1000),
            decoder=lambda t: CqlDuration(t[0], t[1], t[2] * 1000),
            format="tuple",
        )

    async def healthcheck(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()

    async def _run(self, fn: Any) -> Any:
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (SinkUnavailable, BadRows, SchemaMismatch, _Probe):
            raise
        except Exception as exc:
            if classify(exc) is Action.RETRY:
                raise SinkUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            raise

    # -- tables ------------------------------------------------------------------------------
    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        table = _Table(mapping, schema)

        async def setup(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                # Serialise concurrent replicas/pipelines creating tables of the same schema
                # (CREATE SCHEMA IF NOT EXISTS races too: unique violation on pg_namespace).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ident(mapping.target_schema))
                if mapping.create:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(mapping.target_schema)}")
                for layout in (table.main, table.static):
                    if layout is not None:
                        await self._ensure_layout(conn, layout, mapping.create)
                if mapping.delete == "tombstone":
                    if mapping.create:
                        await conn.execute(
                            history_ddl(mapping.target_schema, mapping.target_table, schema.primary_key)
                        )
                    await self._require(conn, mapping.target_schema, mapping.target_table + "_history")

        await self._run(setup)
        self._tables[(mapping.source, mapping.target)] = table

    async def _require(self, conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
        rows = await conn.fetch(
            "SELECT column_name, format_type(a.atttypid, a.atttypmod) AS type "
            "FROM information_schema.columns c JOIN pg_attribute a "
            "ON a.attrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass "
            "AND a.attname = c.column_name WHERE c.table_schema = $1 AND c.table_name = $2",
            schema,
            table,
        )
        if not rows:
            raise SchemaMismatch(f"table {schema}.{table} does not exist and create_tables is off")
        return {r["column_name"]: r["type"] for r in rows}

    async def _ensure_layout(self, conn: asyncpg.Connection, layout: TargetLayout, create: bool) -> None:
        if create:
            await conn.execute(table_ddl(layout))
        have = await self._require(conn, layout.schema, layout.table)
        for col_def, col in zip(column_defs(layout), self._physical(layout), strict=True):
            if col not in have:
                if not create:
                    raise SchemaMismatch(f"{layout.schema}.{layout.table} lacks column {col!r}")
                await conn.execute(f"ALTER TABLE {layout.name} ADD COLUMN IF NOT EXISTS {col_def}")
        for c in (*layout.key, *layout.values):
            want = pg_type(c.type)
            got = have.get(c.name)
            if got is not None and got != want:
                raise SchemaMismatch(
                    f"{layout.schema}.{layout.table}.{c.name} is {got}, expected {want} for CQL {c.type.cql()}"
                )

    @staticmethod
    def _physical(layout: TargetLayout) -> list[str]:
        return [*layout.key_names, *layout.value_columns(), WRITE_TIME, MARKER, DELETED, DELETED_AT]

    # -- write -------------------------------------------------------------------------------
    async def write(self, mapping: TableMapping, events: Sequence[ChangeEvent]) -> WriteOutcome:
        table = self._tables.get((mapping.source, mapping.target))
        if table is None:
            raise SchemaMismatch(f"{self.name}: ensure_table was not called for {mapping.source}")
        if not events:
            return WriteOutcome(applied=0)
        bad: dict[int, str] = {}
        for i, ev in enumerate(events):
            if contains_nul(ev.key) or contains_nul(ev.values):
                bad[i] = "text contains NUL (U+0000), which PostgreSQL cannot store"
        segments = fold(
            table.codec,
            events,
            lambda i, col: bad.setdefault(i, f"column {col!r} is not in the target table"),
        )
        if bad:
            raise BadRows(bad)
        try:
            skipped = await self._run(
                lambda conn: self._apply(conn, table, events, probe=False, segments=segments)
            )
        except (SinkUnavailable, SchemaMismatch):
            raise
        except Exception as exc:
            if classify(exc) is not Action.BAD_DATA:
                raise
            raise BadRows(await self._bisect(table, events, list(range(len(events))), exc)) from exc
        return WriteOutcome(applied=len(events) - skipped, skipped_stale=skipped)

    async def _bisect(
        self, table: _Table, events: Sequence[ChangeEvent], idx: list[int], exc: BaseException
    ) -> dict[int, str]:
        """Find the events that fail alone (trial applies, always rolled back)."""
        if len(idx) == 1:
            return {idx[0]: f"{type(exc).__name__}: {exc}"}
        found: dict[int, str] = {}
        half = len(idx) // 2
        for part in (idx[:half], idx[half:]):
            sub = [events[i] for i in part]
            try:
                await self._run(lambda conn, sub=sub: self._apply(conn, table, sub, probe=True))
            except _Probe:
                continue
            except (SinkUnavailable, SchemaMismatch):
                raise
            except Exception as err:
                if classify(err) is not Action.BAD_DATA:
                    raise
                found.update(await self._bisect(table, events, part, err))
        return found or {idx[0]: f"{type(exc).__name__}: {exc}"}

    async def _apply(
        self,
        conn: asyncpg.Connection,
        table: _Table,
        events: Sequence[ChangeEvent],
        probe: bool,
        segments: list[Segment] | None = None,
    ) -> int:
        """Apply ``events`` in one transaction (rolled back when ``probe``); ``segments`` is the
        fold of exactly these events when the caller has it already (plans are used once)."""
        if segments is None:
            segments = fold(table.codec, events, lambda i, col: None)
        skipped = 0
        for layout in (table.main, table.static):  # outside the transaction: a rollback keeps them
            if layout is not None:
                await self._staging(conn, layout)
        async with conn.transaction():
            for n, seg in enumerate(segments):
                skipped += await self._apply_segment(conn, table, events, seg, n)
            if probe:
                raise _Probe()
        return skipped

    async def _staging(self, conn: asyncpg.Connection, layout: TargetLayout) -> None:
        name = layout.staging_name()
        key = (conn.get_server_pid(), name)
        if key not in self._staged:
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {ident(name)} "
                f"(_seg integer, _sig integer, LIKE {layout.name}) ON COMMIT DELETE ROWS"
            )
            self._staged.add(key)

    async def _apply_segment(
        self, conn: asyncpg.Connection, table: _Table, events: Sequence[ChangeEvent], seg: Segment, n: int
    ) -> int:
        skipped = 0
        for layout in (table.main, table.static):
            if layout is None:
                continue
            plans = [p for p in seg.plans.values() if p.layout is layout]
            if plans:
                skipped += await self._apply_plans(conn, table, layout, plans, n)
        if table.mapping.delete == "tombstone" and seg.deletes:
            await self._history(conn, table, [events[i] for i in seg.deletes])
        if seg.breaker is not None:
            await self._range_delete(conn, table, events[seg.breaker])
        return skipped

    async def _read_back(
        self, conn: asyncpg.Connection, layout: TargetLayout, plans: list[RowPlan]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        need = [p for p in plans if any(not c.cleared for c in p.colls.values())]
        if not need:
            return {}
        cols = sorted({c for p in need for c, coll in p.colls.items() if not coll.cleared})
        phys = [x for c in cols for x in ((c, "_cdc_keys_" + c) if c in layout.list_keys else (c,))]
        keys = layout.key_names
        width = len(keys)
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        step = max(1, _MAX_PARAMS // width)
        for start in range(0, len(need), step):
            chunk = need[start : start + step]
            tuples = ", ".join(
                "(" + ", ".join(f"${j * width + k + 1}" for k in range(width)) + ")"
                for j in range(len(chunk))
            )
            sql = (
                f"SELECT {', '.join(ident(c) for c in (*keys, *phys))} FROM {layout.name} "
                f"WHERE NOT {DELETED} AND ({', '.join(ident(k) for k in keys)}) IN ({tuples})"
            )
            for row in await conn.fetch(sql, *[v for p in chunk for v in p.key]):
                out[tuple(row[k] for k in keys)] = dict(row)
        return out

    async def _apply_plans(
        self, conn: asyncpg.Connection, table: _Table, layout: TargetLayout, plans: list[RowPlan], seg: int
    ) -> int:
        current = await self._read_back(conn, layout, plans)
        columns = ["_seg", "_sig", *self._physical(layout)]
        value_cols = layout.value_columns()
        sigs: dict[tuple[frozenset[str], bool, bool], int] = {}
        records = []
        deletes = 0
        for p in plans:
            if p.delete:
                sig = -1
                deletes += 1
            else:
                resolve(table.codec, p, current.get(p.key))
                shape = (frozenset(p.sets), p.replace, p.nulled and not p.marker)
                sig = sigs.setdefault(shape, len(sigs))
            vals = [None if p.delete else p.sets.get(c) for c in value_cols]
            records.append((seg, sig, *p.key, *vals, p.write_time, p.marker, False, None))
        await conn.copy_records_to_table(layout.staging_name(), records=records, columns=columns)
        applied = 0
        for shape, sig in sigs.items():
            status = await conn.execute(self._upsert_sql(table, layout, *shape[:2]), seg, sig)
            applied += int(status.rsplit(" ", 1)[-1])
        vanish = [sig for shape, sig in sigs.items() if shape[2]]
        if vanish:
            await conn.execute(self._vanish_sql(table, layout), seg, vanish)
        if deletes:
            await conn.execute(self._delete_sql(table, layout), seg)
        return (len(plans) - deletes) - applied

    # -- SQL ---------------------------------------------------------------------------------
    def _upsert_sql(self, table: _Table, layout: TargetLayout, carried: frozenset[str], replace: bool) -> str:
        cache_key = ("upsert", layout.table, carried, replace)
        if cache_key in table.sql:
            return table.sql[cache_key]
        soft = table.mapping.delete == "soft"
        keys = [ident(k) for k in layout.key_names]
        cols = [c for c in layout.value_columns() if c in carried]
        insert_cols = [*keys, *(ident(c) for c in cols), WRITE_TIME, MARKER]
        sets = [f"{ident(c)} = excluded.{ident(c)}" for c in cols]
        for c in layout.value_columns():
            if c in carried:
                continue
            if replace:
                sets.append(f"{ident(c)} = NULL")
            elif soft:
                sets.append(f"{ident(c)} = CASE WHEN t.{DELETED} THEN NULL ELSE t.{ident(c)} END")
        if replace:
            sets.append(f"{MARKER} = excluded.{MARKER}")
        elif soft:
            sets.append(
                f"{MARKER} = CASE WHEN t.{DELETED} THEN excluded.{MARKER} ELSE t.{MARKER} OR excluded.{MARKER} END"
            )
        else:
            sets.append(f"{MARKER} = t.{MARKER} OR excluded.{MARKER}")
        sets += [f"{WRITE_TIME} = excluded.{WRITE_TIME}", f"{DELETED} = false", f"{DELETED_AT} = NULL"]
        sql = (
            f"INSERT INTO {layout.name} AS t ({', '.join(insert_cols)}) "
            f"SELECT {', '.join(insert_cols)} FROM {ident(layout.staging_name())} WHERE _seg = $1 AND _sig = $2 "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(sets)} "
            f"WHERE t.{WRITE_TIME} < excluded.{WRITE_TIME}"
        )
        table.sql[cache_key] = sql
        return sql

    def _key_join(self, layout: TargetLayout) -> str:
        return " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in layout.key_names)

    def _delete_sql(self, table: _Table, layout: TargetLayout) -> str:
        stg = ident(layout.staging_name())
        where = (
            f"s._seg = $1 AND s._sig = -1 AND {self._key_join(layout)} AND t.{WRITE_TIME} <= s.{WRITE_TIME}"
        )
        if table.mapping.delete == "soft":
            return (
                f"UPDATE {layout.name} AS t SET {DELETED} = true, "
                f"{DELETED_AT} = to_timestamp(s.{WRITE_TIME} / 1000000.0), {WRITE_TIME} = s.{WRITE_TIME} "
                f"FROM {stg} AS s WHERE {where}"
            )
        return f"DELETE FROM {layout.name} AS t USING {stg} AS s WHERE {where}"

    def _vanish_sql(self, table: _Table, layout: TargetLayout) -> str:
        """A row without a row marker whose columns all became null no longer exists in Scylla."""
        stg = ident(layout.staging_name())
        nulls = " AND ".join(f"t.{ident(c)} IS NULL" for c in layout.value_columns()) or "TRUE"
        where = (
            f"s._seg = $1 AND s._sig = ANY($2::integer[]) AND {self._key_join(layout)} "
            f"AND t.{WRITE_TIME} = s.{WRITE_TIME} AND NOT t.{MARKER} AND {nulls}"
        )
        if table.mapping.delete == "soft":
            return (
                f"UPDATE {layout.name} AS t SET {DELETED} = true, "
                f"{DELETED_AT} = to_timestamp(s.{WRITE_TIME} / 1000000.0) FROM {stg} AS s WHERE {where}"
            )
        return f"DELETE FROM {layout.name} AS t USING {stg} AS s WHERE {where}"

    async def _range_delete(self, conn: asyncpg.Connection, table: _Table, ev: ChangeEvent) -> None:
        """Partition delete (main + static row) or clustering-range delete, guarded by write time."""
        layouts: list[TargetLayout] = [table.main]
        if ev.op == Op.PARTITION_DELETE and table.static is not None:
            layouts.append(table.static)
        pk = table.schema.partition_key
        ck = [c.name for c in table.schema.clustering_key]
        for layout in layouts:
            args: list[Any] = [table.codec.conv[c.name](ev.key[c.name]) for c in pk]
            cond = [f"{ident(c.name)} = ${i + 1}" for i, c in enumerate(pk)]
            if ev.op == Op.RANGE_DELETE and ev.range is not None:
                r = ev.range
                for bound, inclusive, lower in (
                    (r.start, r.start_inclusive, True),
                    (r.end, r.end_inclusive, False),
                ):
                    if bound:
                        cols = ck[: len(bound)]
                        cond.append(
                            lexicographic(cols, table.main.clustering_order, len(args) + 1, inclusive, lower)
                        )
                        args += [table.codec.conv[c](v) for c, v in zip(cols, bound, strict=True)]
            args.append(ev.write_time_us)
            wt = f"${len(args)}::bigint"
            cond.append(f"{WRITE_TIME} <= {wt}")
            where = " AND ".join(cond)
            if table.mapping.delete == "soft":
                sql = (
                    f"UPDATE {layout.name} SET {DELETED} = true, {DELETED_AT} = to_timestamp({wt} / 1000000.0), "
                    f"{WRITE_TIME} = {wt} WHERE {where}"
                )
            else:
                sql = f"DELETE FROM {layout.name} WHERE {where}"
            await conn.execute(sql, *args)

    async def _history(self, conn: asyncpg.Connection, table: _Table, deletes: list[ChangeEvent]) -> None:
        keys = [c.name for c in table.schema.primary_key]
        cols = [
            "_cdc_stream_id", "_cdc_time", "_cdc_batch_seq", "_cdc_op", "_cdc_write_time", "_cdc_deleted_at",
            *keys, "_cdc_range",
        ]  # fmt: skip
        params = ", ".join(
            f"to_timestamp(${i + 1}::bigint / 1000000.0)" if c == "_cdc_deleted_at" else f"${i + 1}"
            for i, c in enumerate(cols)
        )
        sql = (
            f"INSERT INTO {table.history} ({', '.join(ident(c) for c in cols)}) VALUES ({params}) "
            "ON CONFLICT (_cdc_stream_id, _cdc_time, _cdc_batch_seq) DO NOTHING"
        )
        rows = []
        for ev in deletes:
            rng = None
            if ev.range is not None:
                rng = json_value(
                    {
                        "start": list(ev.range.start),
                        "start_inclusive": ev.range.start_inclusive,
                        "end": list(ev.range.end),
                        "end_inclusive": ev.range.end_inclusive,
                    }
                )
            key = [table.codec.conv[k](ev.key[k]) if k in ev.key else None for k in keys]
            rows.append(
                (ev.pos.stream_id, ev.pos.time, ev.batch_seq, ev.op.name.lower(), ev.write_time_us,
                 ev.write_time_us, *key, rng)
            )  # fmt: skip
        await conn.executemany(sql, rows)
