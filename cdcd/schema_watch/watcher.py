"""``SchemaWatcher``: notices schema changes of the replicated source tables (R-30, R-32).

* Every ``poll`` seconds (1 s) it compares each table's schema in the driver's cluster metadata
  with the last one it knows. The driver refreshes that metadata itself when Scylla pushes a
  SCHEMA_CHANGE event, so a change is usually seen within seconds and costs no query.
* Every ``check_interval`` seconds (``source.schema_check_interval``, at most 60 s) it checks
  against the server, so a missed event is still found: when another replica refreshed the
  shared Redis cache (``SchemaStore``) within that interval it takes the cache's fingerprint;
  otherwise it re-reads the table's metadata from Scylla (and the table's id, which tells a
  dropped and re-created table apart) and refreshes the cache.
* At start it compares the live table with the version recorded in Redis, so a change made
  while cdcd was down (or killed between the DDL and the first new event) is found the same way.

A change is recorded once in Redis (version + history); the replica that records it logs it once
at INFO (ERROR for breaking kinds, ``cdcd.schema_watch.diff``) with the before and after column
lists and counts it in ``cdcd_schema_changes_total{table,kind}`` (the others log it at DEBUG). For a table with ``schema_changes = "halt"``
the change also halts the table (``SchemaStore.halt``): events written at or after the last time
the old schema was confirmed by the server are held by the table's gates until an operator
resumes it (conservative: the hold may start up to ``check_interval`` before the DDL, never after).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import Counter

from cdcd.ops import metrics
from cdcd.ops.logging import get_logger, scrub
from cdcd.schema import CqlType, TableSchema
from cdcd.schema_watch.diff import BREAKING, Change, ChangeKind, column_list, diff, fingerprint, fits
from cdcd.schema_watch.store import Halt, SchemaStore, StoredSchema

__all__ = ["SCHEMA_CHANGES", "Policy", "SchemaWatcher", "TableWatch"]

log = get_logger("cdcd.schema")
Policy = Literal["propagate", "log", "halt"]

# Schema changes of source tables seen by cdcd, by kind (cdcd.schema_watch.diff).
SCHEMA_CHANGES = Counter(
    "cdcd_schema_changes_total",
    "Schema changes of source tables detected",
    ["table", "kind"],
    registry=metrics.REGISTRY,
)


class TableWatch:
    """What the watcher knows of one table (read by gates and /status)."""

    def __init__(self, table: str, policy: Policy, schema: TableSchema) -> None:
        self.table = table
        self.policy = policy
        self.schema = schema  # newest schema of the source table (last existing one if dropped)
        self.exists = True
        self.table_id: str | None = None
        self.version = 0
        self.fingerprint = fingerprint(schema)
        self.confirmed_us = int(time.time() * 1e6)  # last time the server showed this schema
        self.checked_at = 0.0  # last server (or cache) check
        self.halt: Halt | None = None
        self.changed = asyncio.Event()  # set (then replaced) on every new version or resume
        self.last_changes: list[Change] = []
        self.dropped: dict[str, CqlType] = {}  # columns seen dropped -> their type

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "policy": self.policy,
            "exists": self.exists,
            "columns": column_list(self.schema),
        }
        if self.halt is not None:
            out["halted"] = {
                "version": self.halt.version,
                "since_us": self.halt.since_us,
                "reason": self.halt.reason,
            }
        return out

    def _notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class SchemaWatcher:
    def __init__(
        self,
        session: Any,  # cdcd.scylla.ScyllaSession
        store: SchemaStore,
        tables: Mapping[str, tuple[Policy, TableSchema]],
        *,
        check_interval: float = 30.0,
        poll: float = 1.0,
        replica: str = "",
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.session = session
        self.store = store
        self.check_interval = check_interval
        self.poll = poll
        self.replica = replica
        self._sleep = sleep
        self.tables = {t: TableWatch(t, pol, s) for t, (pol, s) in tables.items()}

    # ------------------------------------------------------------------------------ start
    async def start(self) -> None:
        """Compare every table with the version recorded in Redis (or record the first one)."""
        for w in list(self.tables.values()):
            await self._start_one(w)

    async def track(
        self, table: str, policy: Policy, schema: TableSchema, *, check_interval: float | None = None
    ) -> TableWatch:
        """Watch ``table`` too (a table added by a config reload), or take its new policy (and a
        reloaded ``source.schema_check_interval``)."""
        if check_interval is not None:
            self.check_interval = check_interval
            self.store.cache_ttl = max(1, int(check_interval))
        w = self.tables.get(table)
        if w is None:
            w = self.tables[table] = TableWatch(table, policy, schema)
            await self._start_one(w)
        elif w.policy != policy:
            log.info("schema_changes policy changed", table=table, old=w.policy, new=policy)
            w.policy = policy
        return w

    async def _start_one(self, w: TableWatch) -> None:
        live, live_id = w.schema, await self._table_id(w.table)
        w.table_id = live_id
        stored = await self.store.current(w.table)
        if stored is None:
            new, _ = await self.store.record(
                w.table, live, live_id, changes=[], columns_before=[],
                columns_after=column_list(live), replica=self.replica,
            )  # fmt: skip
            w.version = new.version
        elif stored.schema is not None:
            w.version = stored.version
            cached = await self.store.cached(w.table)
            # events from the last time the old schema was seen on are held if this halts
            w.schema, w.fingerprint = stored.schema, stored.fingerprint
            w.exists, w.table_id = stored.table_id is not None, stored.table_id
            w.confirmed_us = int(max(stored.at, cached.at if cached is not None else 0.0) * 1e6)
            await self._changed(w, live, live_id, prev_id=stored.table_id)
        w.checked_at = time.monotonic()
        if not w.last_changes:
            w.confirmed_us = int(time.time() * 1e6)
        w.halt = await self.store.halted(w.table)
        if w.halt is not None:
            log.error(
                "table halted by a schema change; resume with `cdcd resume --table`",
                table=w.table, version=w.halt.version, reason=w.halt.reason,
            )  # fmt: skip

    # ------------------------------------------------------------------------------- run
    async def run(self) -> None:
        """Check until cancelled; errors are logged and retried at the next poll."""
        while True:
            for w in list(self.tables.values()):
                try:
                    await self.check(w)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "schema check failed", table=w.table, error=scrub(f"{type(exc).__name__}: {exc}")
                    )
            await self._sleep(self.poll)

    async def check(self, w: TableWatch, *, force: bool = False) -> None:
        """One check of one table: driver metadata always; the server when due (or ``force``)."""
        now = time.monotonic()
        due = force or now - w.checked_at >= self.check_interval
        if due and not force:
            cached = await self.store.cached(w.table)
            if (
                cached is not None
                and int(cached.at * 1e6) > w.confirmed_us  # written by another replica's check since ours
                and cached.fingerprint == (w.fingerprint if w.exists else "absent")
                and cached.table_id == w.table_id
            ):
                w.checked_at = now  # confirmed on the server within the interval (the key's TTL)
                w.confirmed_us = int(cached.at * 1e6)
                due = False
        live, table_id = await self._live(w.table, refresh=due)
        if due:
            w.checked_at = now
        if table_id is None and live is not None and w.exists:
            table_id = w.table_id  # metadata-only look (no query): same table as far as we know
        if (
            (live is None) == (not w.exists)
            and (live is None or fingerprint(live) == w.fingerprint)
            and table_id == w.table_id
        ):
            if due:
                at = time.time()
                w.confirmed_us = int(at * 1e6)
                await self.store.refresh_cache(
                    w.table,
                    StoredSchema(version=w.version, fingerprint=w.fingerprint if w.exists else "absent",
                                 table_id=w.table_id, schema=w.schema, at=at),
                )  # fmt: skip
            return
        if not due:  # the driver's metadata moved: confirm with the server before recording
            live, table_id = await self._live(w.table, refresh=True)
            w.checked_at = time.monotonic()
        await self._changed(w, live, table_id, prev_id=w.table_id)

    async def force_check(self, table: str) -> None:
        w = self.tables.get(table)
        if w is not None:
            await self.check(w, force=True)

    async def _live(self, table: str, *, refresh: bool) -> tuple[TableSchema | None, str | None]:
        ks, name = table.split(".", 1)
        try:
            schema = await self.session.table_schema(ks, name, refresh=refresh)
        except LookupError:
            return None, None
        return schema, (await self._table_id(table)) if refresh else None

    async def _table_id(self, table: str) -> str | None:
        ks, name = table.split(".", 1)
        rows = await self.session.execute(
            "SELECT id FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s", [ks, name]
        )
        return str(rows[0]["id"]) if rows else None

    async def _changed(
        self, w: TableWatch, live: TableSchema | None, table_id: str | None, *, prev_id: str | None
    ) -> None:
        before = w.schema
        changes: list[Change]
        if live is None:
            if not w.exists:
                return
            changes = [Change(kind="table_dropped")]
            after_cols: list[str] = []
        else:
            changes = self._readded(w, before, live, diff(before, live))
            if prev_id is not None and table_id is not None and prev_id != table_id:
                changes.insert(0, Change(kind="table_recreated", before=prev_id, after=table_id))
            elif not w.exists:
                changes.insert(0, Change(kind="table_recreated", after=table_id))
            after_cols = column_list(live)
        if not changes:  # same columns (e.g. only the driver's view moved): nothing to record
            if live is not None:
                w.fingerprint, w.schema, w.table_id, w.exists = fingerprint(live), live, table_id, True
            return
        before_cols = column_list(before) if w.exists else []
        stored, created = await self.store.record(
            w.table, live if live is not None else before, table_id if live is not None else None,
            changes=changes, columns_before=before_cols, columns_after=after_cols, replica=self.replica,
        )  # fmt: skip
        if live is None:
            w.exists = False
            w.fingerprint = "absent"
            w.table_id = None
        else:
            w.exists, w.schema, w.fingerprint, w.table_id = True, live, fingerprint(live), table_id
        since_us = w.confirmed_us
        w.version = stored.version
        w.last_changes = changes
        breaking = any(c.kind in BREAKING for c in changes)
        fields = dict(
            table=w.table, version=w.version, policy=w.policy,
            changes=[c.describe() for c in changes],
            columns_before=before_cols, columns_after=after_cols,
        )  # fmt: skip
        if not created:  # another replica recorded (logged, counted) this version first
            log.debug("schema change recorded by another replica", **fields)
        else:
            for c in changes:
                SCHEMA_CHANGES.labels(w.table, c.kind).inc()
            if breaking:
                log.error("schema change", **fields)
            else:
                log.info("schema change", **fields)
        if w.policy == "halt":
            reason = f"schema version {w.version}: " + "; ".join(c.describe() for c in changes)
            await self._halt(w, since_us, reason)
        w._notify()

    async def _halt(self, w: TableWatch, since_us: int, reason: str) -> None:
        """Halt ``w``'s table from ``since_us`` on (an earlier halt in Redis stays) and say so."""
        w.halt = await self.store.halt(
            w.table, Halt(version=w.version, since_us=since_us, reason=reason, at=time.time())
        )
        log.error(
            "table halted by a schema change; resume with `cdcd resume --table` or POST /admin/resume/<table>",
            table=w.table, version=w.halt.version, reason=w.halt.reason,
        )  # fmt: skip

    @staticmethod
    def _readded(
        w: TableWatch, before: TableSchema, live: TableSchema, changes: list[Change]
    ) -> list[Change]:
        """A column added under the name of one dropped earlier (seen by this replica) is a
        retype: compatible or not with the type it had (the destinations still hold that one)."""
        out = []
        for c in changes:
            if c.kind == "column_dropped" and c.column is not None:
                w.dropped[c.column] = before.column(c.column).type
            elif c.kind == "column_added" and c.column in w.dropped:
                old, new = w.dropped[c.column], live.column(c.column).type
                if old != new:
                    kind: ChangeKind = "column_retyped" if fits(new, old) else "column_incompatible"
                    out.append(Change(kind=kind, column=c.column, before=old.cql(), after=new.cql()))
                    continue
            out.append(c)
        return out

    # ------------------------------------------------------------------------------ halts
    async def refresh_halt(self, table: str) -> Halt | None:
        """Re-read the halt state (another replica or ``cdcd resume`` may have lifted it)."""
        w = self.tables[table]
        halt = await self.store.halted(table)
        if w.halt is not None and halt is None and await self.store.resumed(table) != w.halt.version:
            # gone without a resume: Redis lost its state (FLUSHALL, restart without persistence)
            w.halt = await self.store.halt(table, w.halt)
            log.warning(
                "the halt of a table was gone from Redis without a resume (Redis lost its state); "
                "halted again", table=table, version=w.halt.version,
            )  # fmt: skip
            return w.halt
        if w.halt is not None and halt is None:
            log.info("table resumed", table=table, version=w.halt.version)
            w.halt = None
            w._notify()
        else:
            w.halt = halt
        return w.halt

    async def halt_lacking(self, table: str, lacking: Sequence[str], destination: str) -> Halt:
        """Halt ``table`` because a destination lacks source columns while no halt or schema
        history is recorded (Redis lost its state while the table was halted, then cdcd
        restarted): events from now on, and any carrying those columns, are held as before."""
        w = self.tables[table]
        reason = f"{destination} lacks source columns {sorted(lacking)} and Redis holds no schema history"
        await self._halt(w, int(time.time() * 1e6), reason)
        w._notify()
        assert w.halt is not None
        return w.halt

    async def resume(self, table: str) -> Mapping[str, Any]:
        """Admin action: lift the halt of ``table`` (every replica's gates notice within seconds)."""
        if table not in self.tables:
            raise KeyError(f"table {table!r} is not replicated; known: {sorted(self.tables)}")
        was = await self.store.resume(table)
        await self.refresh_halt(table)
        return {"table": table, "was_halted": was is not None, "version": was.version if was else None}

    def status(self) -> dict[str, Any]:
        return {t: w.status() for t, w in self.tables.items()}

    async def wait_halted(self, table: str, poll: float = 2.0) -> None:
        """Return once ``table`` is no longer halted (polls Redis: resumes come from any replica)."""
        w = self.tables[table]
        while w.halt is not None:
            changed = w.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll)
            with contextlib.suppress(Exception):
                await self.refresh_halt(table)
