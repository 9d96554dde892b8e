"""PostgreSQL destination (R-10): the reference sink. Copy its shape (config, connect/healthcheck,
ensure_table, write, classify) for a new destination.

Per ``write()``: ONE transaction.

1. The batch is folded per row in Python (``fold.fold``): several changes to one key become one
   row plan holding the final state; events PostgreSQL could never store (U+0000 in text, unknown
   columns) are refused at once with ``BadRows``. Partition and range deletes cut the batch into
   segments, applied in order.
2. Per segment, the row plans are COPYed (binary) into a TEMP staging table, then applied with one
   ``INSERT .. SELECT .. ON CONFLICT (pk) DO UPDATE SET <carried columns> WHERE
   (t._cdc_write_time, t._cdc_batch_seq) < (excluded...)`` per set of carried columns: partial
   updates touch only their columns, and an older or replayed event changes nothing (counted in
   ``WriteOutcome.skipped_stale``). Row deletes join the staging table; partition and range
   deletes are single statements; all deletes are guarded by write time.
3. ``delete = "soft"`` keeps deleted rows with ``_cdc_deleted``; ``"tombstone"`` deletes them and
   appends to ``<table>_history`` (unique by CDC position: a replay adds nothing).
4. The positions the batch completes (``Applied``, handed in by the pipeline) are upserted into
   the offsets table (``offsets.py``, ``cdcd.sinks.offsets``) in the same transaction, so the
   destination itself knows what it applied when Redis has lost its checkpoints.

Static columns live in ``<table>_static`` (one row per partition), because they belong to the
partition, not to its rows; ``<table>_view`` joins them back (docs/type-map.md).

Modules of ``cdcd.sinks.postgres``: ``types`` (type map, value conversion), ``sql`` (identifiers,
DDL, statement texts), ``fold`` (batch -> row plans, pure), ``table`` (per-mapping state, codecs,
table checks); ``cdcd.sinks.classify`` (exception -> action).

Errors: connection problems, timeouts and SQLSTATE 08/53/57/40001/40P01 raise ``SinkUnavailable``
(retry the whole batch). A data error (SQLSTATE 22/23) rolls back and the batch is bisected with
trial transactions (always rolled back) until the failing events are known: ``BadRows`` names
them and nothing was committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from cdcd.config.endpoints import postgres_endpoint
from cdcd.errors import BadRows, SchemaMismatch, SinkUnavailable, reason
from cdcd.events import ChangeEvent, Op, Position
from cdcd.ops.logging import scrub
from cdcd.schema import TableSchema
from cdcd.sinks import Skipped, TableMapping, WriteOutcome, config_secret
from cdcd.sinks.classify import Action, classify, connection_broken
from cdcd.sinks.offsets import Applied, PerMapping, offsets_location
from cdcd.sinks.outcome import in_batch, version_column
from cdcd.sinks.postgres.fold import RowPlan, Segment, fold, resolve
from cdcd.sinks.postgres.grants import missing_grants
from cdcd.sinks.postgres.offsets import PgOffsets
from cdcd.sinks.postgres.sql import (
    DELETED,
    DELETED_AT,
    MARKER,
    SEQ,
    SQL_ORDERED,
    STAGING_COLUMNS,
    WRITE_TIME,
    TargetLayout,
    history_ddl,
    ident,
    static_view_ddl,
)
from cdcd.sinks.postgres.table import (
    DELETE_SIG,
    READ_BACK,
    PgTable,
    ensure_layout,
    init_connection,
    not_null_columns,
    require_columns,
)
from cdcd.sinks.postgres.types import (
    LIST_KEYS_PREFIX,
    json_value,
    row_key,
)
from cdcd.stages.targets import PG_CHECKS_SQL, PG_COLUMNS_SQL, TargetTable, pg_column, table_from_rows

__all__ = ["PostgresSink"]

_UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook. asyncpg's default runs ``RESET ALL; CLOSE ALL; UNLISTEN *;
    pg_advisory_unlock_all()`` on every release: one round trip per write for state this sink never
    leaves behind (transactions are managed, advisory locks are transaction-scoped). Open
    transactions are still rolled back by the pool itself."""


def _is_closed(conn: Any) -> bool:
    """``conn.is_closed()``; True for a pooled connection the pool already took back (its
    proxy raises InterfaceError once the server ended the session)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _unmask(exc: BaseException) -> BaseException:
    """The error that really happened: asyncpg raises InterfaceError ("the underlying connection
    is closed") from ``Transaction.__aexit__`` and pooled-connection calls after the server ended
    the session, hiding the server's reason (``extension "timescaledb" must be preloaded``)."""
    while isinstance(exc, asyncpg.InterfaceError) and isinstance(exc.__context__, Exception):
        exc = exc.__context__
    return exc


class _Probe(Exception):
    """Raised inside a transaction to roll a trial apply back (bisection)."""


class PostgresSink:
    """``[destinations.<name>] type = "postgres"``. Config attributes used: ``dsn`` (or
    ``dsn_file``), ``pool_size``, ``connect_timeout``, ``command_timeout``."""

    kind = "postgres"

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._tables: dict[tuple[str, str], PgTable] = {}
        self._offsets_of = PerMapping(  # per mapping: its offsets table
            lambda m: PgOffsets(self.name, self.config, m.source, m.target_schema)
        )
        self._staged: set[tuple[int, str]] = set()  # (backend pid, staging table) created
        self._connect_lock = asyncio.Lock()  # one pool, however many callers connect at once

    # -- lifecycle ---------------------------------------------------------------------------
    def _dsn(self) -> str:
        dsn = config_secret(self.config, "dsn")
        if dsn:
            return dsn
        raise SchemaMismatch(f"destination {self.name!r}: no dsn configured")

    async def connect(self) -> None:
        """Open the connection pool. Raises ``SinkUnavailable`` when PostgreSQL cannot be reached
        (the caller retries with backoff). Concurrent callers share one pool."""
        if self._pool is not None:
            return
        async with self._connect_lock:
            if self._pool is None:
                await self._connect()

    async def _connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn(),
                min_size=1,
                max_size=int(getattr(self.config, "pool_size", 4)),
                timeout=float(getattr(self.config, "connect_timeout", 10.0)),
                command_timeout=float(getattr(self.config, "command_timeout", 60.0)),
                init=self._new_connection,
                # Keep sessions (and their staging tables) instead of cycling idle ones every 5 min.
                max_inactive_connection_lifetime=0,
                reset=_keep_session,
            )
        except Exception as exc:
            if classify(exc) is Action.FATAL and not isinstance(exc, asyncpg.PostgresError):
                raise
            raise self._unavailable(exc, "cannot connect to") from exc

    label = "PostgreSQL"  # the destination's kind in messages

    def _unavailable(self, exc: BaseException, doing: str = "") -> SinkUnavailable:
        """``SinkUnavailable`` naming the destination, where it is (host:port/db and user from the
        DSN, never its password) and what the server or the network said."""
        where = postgres_endpoint(config_secret(self.config, "dsn") or "")
        what = f"{doing} {self.label}" if doing else self.label
        return SinkUnavailable(scrub(f"{self.name}: {what} at {where}: {reason(exc)}"))

    _init_connection = staticmethod(init_connection)

    async def _new_connection(self, conn: asyncpg.Connection) -> None:
        """Pool ``init``: codecs, and forget staging tables of an earlier session with this pid."""
        await init_connection(conn)
        pid = conn.get_server_pid()
        self._staged = {k for k in self._staged if k[0] != pid}

    async def healthcheck(self) -> None:
        """One round trip; raises ``SinkUnavailable`` when PostgreSQL does not answer."""
        await self.connect()
        try:
            await self._run(lambda conn: conn.fetchval("SELECT 1"))
        except SinkUnavailable as exc:
            raise self._unavailable(exc.__cause__ or exc) from exc.__cause__ or exc

    async def missing_grants(self, mappings: Sequence[TableMapping]) -> list[str]:
        """The GRANT statements this role lacks for ``mappings`` (``cdcd check-config``)."""
        return list(
            await self._run(
                lambda conn: missing_grants(
                    conn, mappings, lambda m: offsets_location(self.config, m.target_schema)
                )
            )
        )

    async def aclose(self) -> None:
        """Close the pool (terminate it after 10 s); never raises."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()

    async def _run(self, fn: Any) -> Any:
        """Run ``fn(conn)`` on a pooled connection; retriable failures become SinkUnavailable."""
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                try:
                    return await fn(conn)
                except Exception as exc:
                    if connection_broken(exc) and not _is_closed(conn):
                        conn.terminate()  # the pool opens a fresh one instead of reusing it
                    raise
        except (SinkUnavailable, BadRows, SchemaMismatch, _Probe):
            raise
        except asyncpg.UndefinedTableError as exc:
            # A staging table vanished with its session (server restart, pid reuse): forget them.
            self._staged.clear()
            raise SinkUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            original = _unmask(exc)
            if classify(original) is Action.RETRY:
                raise SinkUnavailable(f"{self.name}: {type(original).__name__}: {original}") from original
            raise

    # -- tables ------------------------------------------------------------------------------
    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        """Create (``mapping.create``) or check the target tables of one source table; add columns
        the source gained. Raises ``SchemaMismatch`` for names PostgreSQL cannot hold, a missing
        table/column with ``create`` off, or a column of another type."""
        table = PgTable(mapping, schema)
        convs: dict[str, Any] = {}
        fill: set[str] = set()

        async def setup(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                # Serialise concurrent replicas/pipelines creating tables of the same schema
                # (CREATE SCHEMA IF NOT EXISTS races too: unique violation on pg_namespace).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ident(mapping.target_schema))
                if offsets.schema != mapping.target_schema:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ident(offsets.schema))
                if mapping.create:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(mapping.target_schema)}")
                for layout in (table.main, table.static):
                    if layout is not None:
                        convs.update(
                            await ensure_layout(
                                conn, layout, mapping.create, types=mapping.column_types,
                                bookkeeping=mapping.bookkeeping, source=mapping.source,
                            )
                        )  # fmt: skip
                        values = {c.name for c in layout.values}
                        fill.update(values & await not_null_columns(conn, layout.schema, layout.table))
                if table.static is not None and mapping.create:
                    for ddl in static_view_ddl(table.main, table.static):
                        await conn.execute(ddl)
                if mapping.delete == "tombstone":
                    if mapping.create:
                        await conn.execute(
                            history_ddl(mapping.target_schema, mapping.target_table, schema.primary_key)
                        )
                    await require_columns(conn, mapping.target_schema, mapping.target_table + "_history")
                # the offsets table is cdcd's own bookkeeping: created like the bookkeeping columns
                # of a user's table (add_bookkeeping_columns), else refused with its CREATE TABLE
                book = mapping.create if mapping.bookkeeping is None else mapping.bookkeeping
                await offsets.ensure(conn, mapping.create or book)

        offsets = self._offsets_of(mapping)
        await self._run(setup)
        if convs or fill:
            table = PgTable(mapping, schema, convs, frozenset(fill))
        self._tables[(mapping.source, mapping.target)] = table

    # -- applied positions (cdcd.sinks.offsets) -----------------------------------------------
    async def load_applied(
        self, mapping: TableMapping, generation: int, streams: Sequence[bytes]
    ) -> dict[bytes, Position]:
        """Positions recorded for these streams of ``generation`` (absent: none recorded)."""
        offsets = self._offsets_of(mapping)
        result: dict[bytes, Position] = await self._run(
            lambda conn: offsets.load(conn, generation, list(streams))
        )
        return result

    async def record_applied(self, mapping: TableMapping, applied: Applied) -> None:
        """Record positions alone, in a transaction of their own."""
        offsets = self._offsets_of(mapping)

        async def record(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await offsets.record(conn, applied)

        if applied.positions:
            await self._run(record)

    async def applied_start(self, mapping: TableMapping) -> int | None:
        """Start floor recorded with the newest generation of the mapping's source (None: none)."""
        offsets = self._offsets_of(mapping)
        start: int | None = await self._run(offsets.start)
        return start

    async def target_definition(self, mapping: TableMapping) -> TargetTable:
        """The target table as PostgreSQL defines it (columns, NOT NULL, CHECK constraints), for
        the validator (``cdcd.stages.targets``)."""
        schema, name = mapping.target_schema, mapping.target_table

        async def read(conn: asyncpg.Connection) -> TargetTable:
            cols = [pg_column(r) for r in await conn.fetch(PG_COLUMNS_SQL, schema, name)]
            checks = [(r["name"], r["def"]) for r in await conn.fetch(PG_CHECKS_SQL, schema, name)]
            return table_from_rows(f"{schema}.{name}", cols, checks)

        result: TargetTable = await self._run(read)
        return result

    # -- write -------------------------------------------------------------------------------
    async def write(
        self, mapping: TableMapping, events: Sequence[ChangeEvent], applied: Applied | None = None
    ) -> WriteOutcome:
        """Apply ``events`` (one table, stream order) in one transaction; see the module doc.
        ``applied`` (positions covered by this write) is recorded in the same transaction."""
        table = self._tables.get((mapping.source, mapping.target))
        if table is None:
            raise SchemaMismatch(f"{self.name}: ensure_table was not called for {mapping.source}")
        if not events:
            if applied is not None:
                await self.record_applied(mapping, applied)
            return WriteOutcome(applied=0)
        keep, skipped = in_batch(events, mapping.staleness, version_column(mapping))
        work = events if len(keep) == len(events) else [events[i] for i in keep]
        segments, bad = fold(table.codec, work, soft=table.soft)
        if bad:
            raise BadRows({keep[i]: r for i, r in bad.items()})
        record = self._offsets_of(mapping) if applied is not None and applied.positions else None
        try:
            guarded: dict[int, Skipped] = await self._run(
                lambda conn: self._apply(conn, table, work, segments, probe=False, record=(record, applied))
            )
        except (SinkUnavailable, SchemaMismatch):
            raise
        except Exception as exc:
            if classify(exc) is not Action.BAD_DATA:
                raise
            found = await self._bisect(table, work, list(range(len(work))), exc)
            raise BadRows({keep[i]: r for i, r in found.items()}) from exc
        if guarded:
            skipped += [msgspec.structs.replace(x, index=keep[i]) for i, x in guarded.items()]
            skipped.sort(key=lambda x: x.index)
        n = len(skipped)
        return WriteOutcome(applied=len(events) - n, skipped_stale=n, skipped=tuple(skipped))

    async def _bisect(
        self, table: PgTable, events: Sequence[ChangeEvent], idx: list[int], exc: BaseException
    ) -> dict[int, str]:
        """Find the events that fail alone (trial applies, always rolled back). Halves that pass are
        not retried, so one bad event in n costs about 2·log2(n) trial transactions."""
        if len(idx) == 1:
            return {idx[0]: f"{type(exc).__name__}: {exc}"}
        found: dict[int, str] = {}
        half = len(idx) // 2
        for part in (idx[:half], idx[half:]):
            sub = [events[i] for i in part]
            segments, _ = fold(table.codec, sub, soft=table.soft)
            try:
                await self._run(
                    lambda conn, sub=sub, s=segments: self._apply(conn, table, sub, s, probe=True)
                )
            except _Probe:
                continue
            except (SinkUnavailable, SchemaMismatch):
                raise
            except Exception as err:
                if classify(err) is not Action.BAD_DATA:
                    raise
                found.update(await self._bisect(table, events, part, err))
        # Both halves pass alone but not together: the events interact. Name the first one only:
        # without it the rest may pass, and each retry peels off one more if not.
        return found or {idx[0]: f"{type(exc).__name__}: {exc}"}

    async def _apply(
        self,
        conn: asyncpg.Connection,
        table: PgTable,
        events: Sequence[ChangeEvent],
        segments: list[Segment],
        probe: bool,
        *,
        record: tuple[PgOffsets | None, Applied | None] = (None, None),
    ) -> dict[int, Skipped]:
        """Apply the segments in one transaction; returns the events the version guard skipped
        (by index into ``events``)."""
        for layout in (table.main, table.static):  # outside the transaction: a rollback keeps them
            if layout is not None:
                key = (conn.get_server_pid(), layout.staging_name())
                if key not in self._staged:
                    await conn.execute(layout.staging_ddl())
                    self._staged.add(key)
        skipped: dict[int, tuple[RowPlan, Skipped]] = {}
        async with conn.transaction():
            for n, seg in enumerate(segments):
                for layout in (table.main, table.static):
                    if layout is not None:
                        plans = [p for p in seg.plans.values() if p.layout is layout]
                        if plans:
                            await self._apply_plans(conn, table, layout, plans, n, skipped=skipped)
                if table.mapping.delete == "tombstone" and seg.deletes:
                    await self._history(conn, table, [events[i] for i in seg.deletes])
                if seg.breaker is not None:
                    await self._wide_delete(conn, table, events[seg.breaker])
            if probe:
                raise _Probe()
            offsets, applied = record
            if offsets is not None and applied is not None:
                await offsets.record(conn, applied)  # same transaction as the data: both or neither
        if not skipped:
            return {}
        # An event that also wrote the other table (static cells) is applied if either part was.
        lost = {id(p) for p, _ in skipped.values()}
        for seg in segments:
            for p in seg.plans.values():
                if id(p) not in lost:
                    for i in p.indices:
                        skipped.pop(i, None)
        return {i: x for i, (_, x) in skipped.items()}

    async def _read_back(
        self, conn: asyncpg.Connection, table: PgTable, layout: TargetLayout, plans: list[RowPlan], seg: int
    ) -> None:
        """Resolve collection deltas against the values PostgreSQL holds now (fold.resolve)."""
        need = [p for p in plans if p.colls and any(not c.cleared for c in p.colls.values())]
        current: dict[tuple[Any, ...], dict[str, Any]] = {}
        if need:
            cols = sorted({c for p in need for c, coll in p.colls.items() if not coll.cleared})
            phys = tuple(
                x for c in cols for x in ((c, LIST_KEYS_PREFIX + c) if c in layout.list_keys else (c,))
            )
            records = [(seg, READ_BACK, *p.key) for p in need]
            await conn.copy_records_to_table(
                layout.staging_name(), records=records, columns=[*STAGING_COLUMNS, *layout.key_names]
            )
            nkeys = len(layout.key)
            for row in await conn.fetch(table.sql("read_back", layout, phys), seg):
                current[row_key(tuple(row[:nkeys]))] = dict(zip(phys, row[nkeys:], strict=True))
        for p in plans:
            if p.colls:
                resolve(table.codec, p, current.get(row_key(p.key)))

    async def _apply_plans(
        self,
        conn: asyncpg.Connection,
        table: PgTable,
        layout: TargetLayout,
        plans: list[RowPlan],
        seg: int,
        *,
        skipped: dict[int, tuple[RowPlan, Skipped]],
    ) -> None:
        """Stage and apply the row plans of one layout in one segment; the events of plans the
        version guard skipped (older than, or the same as, what the row holds) go to ``skipped``."""
        await self._read_back(conn, table, layout, plans, seg)
        used: set[str] = set()
        keep = False
        for p in plans:
            used.update(p.sets)
            keep = keep or p.keep
        value_cols = [c for c in layout.value_columns() if c in used]  # the columns COPY sends
        meta = [WRITE_TIME, SEQ, MARKER, *((DELETED, DELETED_AT) if keep else ())]
        sigs: dict[tuple[frozenset[str], bool, bool, bool], int] = {}
        plans_per_sig: dict[int, list[RowPlan]] = {}
        records = []
        deletes = 0
        for p in plans:
            if p.delete and not p.keep:
                deletes += 1
                sig = DELETE_SIG
            else:
                sets = p.sets
                shape = (frozenset(sets), p.replace, p.nulled and not p.marker and not p.keep, p.keep)
                sig = sigs.get(shape, -3)
                if sig == -3:
                    sig = sigs[shape] = len(sigs)
                    plans_per_sig[sig] = []
                plans_per_sig[sig].append(p)
            record = [seg, sig, *p.key, *[p.sets.get(c) for c in value_cols], p.write_time, p.seq, p.marker]
            if keep:
                gone = _UNIX_EPOCH + dt.timedelta(microseconds=p.write_time) if p.keep else None
                record += [p.keep, gone]
            records.append(record)
        await conn.copy_records_to_table(
            layout.staging_name(),
            records=records,
            columns=[*STAGING_COLUMNS, *layout.key_names, *value_cols, *meta],
        )
        for (carried, replace, _, keep), sig in sigs.items():
            status = await conn.execute(table.sql("upsert", layout, carried, replace, keep), seg, sig)
            applied = int(status.rsplit(" ", 1)[-1])
            if applied < len(plans_per_sig[sig]):  # some rows were newer: which, and how new
                await self._skipped(conn, table, layout, plans_per_sig[sig], seg, sig, skipped)
        vanish = [sig for shape, sig in sigs.items() if shape[2]]
        if vanish:
            await conn.execute(table.sql("vanish", layout), seg, vanish)
        if deletes:
            status = await conn.execute(table.sql("delete", layout), seg)
            if int(status.rsplit(" ", 1)[-1]) < deletes:  # some rows were newer (or already gone)
                deleted = [p for p in plans if p.delete and not p.keep]
                await self._skipped(conn, table, layout, deleted, seg, DELETE_SIG, skipped)

    async def _skipped(  # noqa: PLR0917
        self,
        conn: asyncpg.Connection,
        table: PgTable,
        layout: TargetLayout,
        plans: list[RowPlan],
        seg: int,
        sig: int,
        out: dict[int, tuple[RowPlan, Skipped]],
    ) -> None:
        """Classify the plans of one signature the version guard skipped: the stored rows this
        transaction did not write. ``duplicate`` when the row holds the version the plan ends
        with (a replay), else ``stale``, with the row's write time and version."""
        nkeys = len(layout.key)
        by_key = {row_key(p.key): p for p in plans}
        version = table.version(layout)
        for row in await conn.fetch(table.sql("skipped", layout), seg, sig):
            p = by_key.get(row_key(tuple(row[:nkeys])))
            if p is None:
                continue
            wt, seq, ver = row[nkeys], row[nkeys + 1], row[nkeys + 2]
            dup = (wt, seq) == (p.write_time, p.seq)
            if dup and version is not None and p.sets.get(version, ver) != ver:
                dup = False
            verdict = Skipped(0, "duplicate" if dup else "stale", row_write_time_us=wt, row_version=ver)
            for i in p.indices:
                out[i] = (p, msgspec.structs.replace(verdict, index=i))

    async def _wide_delete(self, conn: asyncpg.Connection, table: PgTable, ev: ChangeEvent) -> None:
        """Partition delete (main + static row) or clustering-range delete, guarded by write time."""
        codec = table.codec
        pk = list(codec.key_of(True, ev.key))
        soft_args = [ev.batch_seq] if table.soft else []
        if ev.op == Op.RANGE_DELETE and ev.range is not None:
            r = ev.range
            n = max(len(r.start), len(r.end))
            if any(c.type.name not in SQL_ORDERED for c in table.schema.clustering_key[:n]):
                await self._range_delete_matched(conn, table, ev, pk)
                return
            bounds: list[tuple[tuple[str, ...], bool, bool]] = []
            args: list[Any] = list(pk)
            for prefix, inclusive, lower in (
                (r.start, r.start_inclusive, True),
                (r.end, r.end_inclusive, False),
            ):
                if prefix:
                    bounds.append((tuple(codec.ck_names[: len(prefix)]), inclusive, lower))
                    args += codec.range_bound(prefix)
            await conn.execute(
                table.sql("wide", table.main, tuple(bounds)), *args, ev.write_time_us, *soft_args
            )
            return
        for layout in (table.main, table.static):
            if layout is not None:
                await conn.execute(table.sql("wide", layout, ()), *pk, ev.write_time_us, *soft_args)

    async def _range_delete_matched(
        self, conn: asyncpg.Connection, table: PgTable, ev: ChangeEvent, pk: list[Any]
    ) -> None:
        """Range delete over clustering types PostgreSQL orders differently from CQL (timeuuid,
        uuid, inet, collections, tuples, UDTs): lock the partition's candidate rows, match them
        in Python in CQL order, then delete them by ctid."""
        assert ev.range is not None
        inside = table.codec.range_matcher(ev.range)
        rows = await conn.fetch(table.sql("range_rows", table.main), *pk, ev.write_time_us)
        ctids = [r[0] for r in rows if inside(tuple(r)[1:])]
        if ctids:
            args = [ev.write_time_us, ev.batch_seq] if table.soft else []
            await conn.execute(table.sql("by_ctid", table.main), ctids, *args)

    async def _history(self, conn: asyncpg.Connection, table: PgTable, deletes: list[ChangeEvent]) -> None:
        keys = [c.name for c in table.schema.primary_key]
        conv = table.codec.conv
        rows = []
        for ev in deletes:
            rng = None
            if ev.range is not None:
                rng = json_value(msgspec.structs.asdict(ev.range))
            key = [conv[k](ev.key[k]) if ev.key.get(k) is not None else None for k in keys]
            op = {
                Op.SERVICE_ROW_DELETE: "row_delete",
                Op.SERVICE_PARTITION_DELETE: "partition_delete",
            }.get(ev.op, ev.op.name.lower())
            rows.append(
                (
                    ev.pos.stream_id,
                    ev.pos.time,
                    ev.batch_seq,
                    op,
                    ev.write_time_us,
                    ev.write_time_us,
                    *key,
                    rng,
                )
            )
        await conn.executemany(table.history_sql, rows)
