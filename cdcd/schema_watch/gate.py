"""``SchemaGate``: applies a table's ``schema_changes`` policy for one destination, between a
branch's buffer and its sink writes (``Branch(gate=...)``; one gate per (table, destination),
shared by the table's stream groups).

The gate keeps the schema the destination table is at (``applied``, recorded in Redis under
``P:schema:applied:<destination>:<table>`` so a restart does not forget it) and, for each batch
about to be written:

* ``propagate``: when the source schema moved (a newer ``SchemaWatcher`` version, or an event
  carrying a column the destination lacks), ``applied`` becomes ``destination_schema(applied,
  source)`` and ``sink.ensure_table`` adds the new columns (PostgreSQL/TimescaleDB and ClickHouse
  ``ALTER TABLE ... ADD COLUMN``; types per the type maps and column overrides) *before* the
  batch is written. Dropped columns stay in the destination and are no longer written: rows keep
  the value they had, rows inserted afterwards hold NULL. A re-added column whose new type does
  not fit the destination column is breaking: events writing it go to the validation queue
  (stage ``schema``) with the reason, and are written without that column (the other columns
  keep flowing).
* A field added to a user type (``ALTER TYPE ... ADD``): the destination column keeps the
  type's previous fields; the new field's values are left out (top-level UDT columns; ClickHouse
  cannot change a tuple's type in place).
* A destination table cdcd did not create (``create_tables = false``, or a table that existed
  before cdcd first ran: cdcd marks the tables it creates with a comment): new source columns are
  not added; if the table has no such column it is handled as ``log`` (said once).
* ``log``: the destination is never altered after its creation; values of columns it lacks are
  left out of the events (never dead-lettered).
* ``halt``: while the table is halted (``SchemaWatcher``), events written at or after the halt's
  ``since_us`` (and any event carrying an unknown column) are held: the events before them are
  written, then the gate waits (state ``halted``) until an operator resumes the table; then the
  change is propagated as above and the held events are written. Nothing is read past the
  buffer meanwhile and no checkpoint moves past the held events, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from cdcd.errors import SchemaMismatch, UnmanagedTable
from cdcd.events import ChangeEvent
from cdcd.ops.logging import get_logger, scrub
from cdcd.schema import TableSchema
from cdcd.schema_watch.diff import column_list, destination_schema
from cdcd.schema_watch.watcher import SchemaWatcher, TableWatch
from cdcd.stages import Rejection, RejectionLike
from cdcd.state.common import key_part, redis_errors

__all__ = ["GatePart", "SchemaGate"]

log = get_logger("cdcd.schema")
_schema_dec = msgspec.json.Decoder(TableSchema)


class GatePart(msgspec.Struct):
    """What the branch does next: write ``events``, record ``rejections``."""

    events: list[ChangeEvent]
    rejections: list[RejectionLike]


def touched(ev: ChangeEvent) -> set[str]:
    names = set(ev.values)
    names.update(ev.deleted)
    names.update(ev.deleted_elements)
    if ev.preimage:
        names.update(ev.preimage)
    if ev.postimage:
        names.update(ev.postimage)
    return names


def strip(ev: ChangeEvent, keep: frozenset[str]) -> ChangeEvent:
    """``ev`` without the columns not in ``keep`` (key columns are always kept)."""

    def cut(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if d is None else {k: v for k, v in d.items() if k in keep or k in ev.key}

    return msgspec.structs.replace(
        ev,
        values={k: v for k, v in ev.values.items() if k in keep},
        deleted=frozenset(n for n in ev.deleted if n in keep),
        deleted_elements={k: v for k, v in ev.deleted_elements.items() if k in keep},
        preimage=cut(ev.preimage),
        postimage=cut(ev.postimage),
    )


def trim_udts(ev: ChangeEvent, fields: dict[str, frozenset[str]]) -> ChangeEvent:
    """``ev`` with the values of top-level UDT columns cut to the fields the destination's type has
    (a field added by ``ALTER TYPE ... ADD`` is not written: a ClickHouse tuple cannot change type
    in place, and PostgreSQL follows the same rule)."""
    if not any(c in ev.values or c in ev.deleted_elements or ev.preimage or ev.postimage for c in fields):
        return ev

    def cut(col: str, v: Any) -> Any:
        return {k: x for k, x in v.items() if k in fields[col]} if isinstance(v, dict) else v

    values = dict(ev.values)
    for col in fields:
        if col in values:
            values[col] = cut(col, values[col])
            if values[col] == {} and col not in ev.deleted:
                del values[col]  # a delta that wrote only new fields
    elements = {
        c: ([x for x in v if x in fields[c]] if c in fields else v) for c, v in ev.deleted_elements.items()
    }
    elements = {c: v for c, v in elements.items() if v}

    def image(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if d is None else {k: (cut(k, v) if k in fields else v) for k, v in d.items()}

    return msgspec.structs.replace(
        ev,
        values=values,
        deleted_elements=elements,
        preimage=image(ev.preimage),
        postimage=image(ev.postimage),
    )


class SchemaGate:
    def __init__(
        self,
        *,
        watcher: SchemaWatcher,
        table: str,
        destination: str,
        sink: Any,
        mapping: Any,
        redis: aioredis.Redis,
        prefix: str,
        dest_schema: Callable[[TableSchema], TableSchema] = lambda s: s,
        on_altered: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.watcher = watcher
        self.watch: TableWatch = watcher.tables[table]
        self.table = table
        self.destination = destination
        self.sink = sink
        self.mapping = mapping
        self.redis = redis
        self.dest_schema = dest_schema  # source schema -> the destination's (masked columns are text)
        self.on_altered = on_altered  # awaited after the destination table was altered
        self.key = f"{prefix.rstrip(':')}:schema:applied:{key_part(destination, 'destination')}:{key_part(table, 'table')}"
        self.applied: TableSchema | None = None
        self.applied_version = -1
        self.incompatible: frozenset[str] = frozenset()
        self._names: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._said: set[str] = set()
        self._udt_key: int | None = None
        self._seen_version = -1  # watcher version the incompatible columns were computed for
        self._udt_cache: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------------------ setup
    async def ensure(self) -> None:
        """Start-up: create/check the destination table at the schema it should be at."""
        async with self._lock:
            with redis_errors(f"reading the applied schema of {self.table} in {self.destination}"):
                raw = await self.redis.get(self.key)
            if raw is not None:
                self._set(_schema_dec.decode(raw))
            elif self.watch.policy != "propagate" and await self._from_destination():
                return
            if self.applied is None:
                await self._apply(self.watch.schema)
            elif self._follows():
                await self._move(start=True)
            else:
                await self._ensure(self.applied)

    async def _from_destination(self) -> bool:
        """No applied schema in Redis (first start, or Redis lost its state) and a ``log`` or
        ``halt`` policy: if the destination table exists but lacks source columns, those were
        added while cdcd did not alter it; it stays as it is (``log``: they are left out) or the
        table halts again (``halt``: a halt lost with Redis's state is restored). True if so."""
        describe = getattr(self.sink, "target_definition", None)
        if describe is None:
            return False
        have = set((await describe(self.mapping)).columns)
        if not have:
            return False  # not there yet: created at the source's schema
        source = self.watch.schema
        lacking = sorted(  # (static columns live in the side table <table>_static)
            c.name for c in self.dest_schema(source).columns if c.kind != "static" and c.name not in have
        )
        if not lacking:
            return False
        await self._apply(
            msgspec.structs.replace(source, columns=tuple(c for c in source.columns if c.name not in lacking))
        )
        if self.watch.policy == "halt" and self.watch.halt is None:
            await self.watcher.halt_lacking(self.table, lacking, self.destination)
        return True

    def _follows(self) -> bool:
        """The destination follows source changes now (propagate, or halt when not halted)."""
        pol = self.watch.policy
        return pol == "propagate" or (pol == "halt" and self.watch.halt is None)

    def _set(self, schema: TableSchema) -> None:
        self.applied = schema
        self._names = frozenset(c.name for c in schema.columns)

    async def _ensure(self, schema: TableSchema) -> None:
        await self.sink.ensure_table(self.mapping, self.dest_schema(schema))

    async def _apply(self, schema: TableSchema) -> None:
        await self._ensure(schema)
        with redis_errors(f"saving the applied schema of {self.table} in {self.destination}"):
            await self.redis.set(self.key, msgspec.json.encode(schema))
        self._set(schema)

    async def _move(self, *, start: bool = False) -> None:
        """Bring the destination to the watcher's schema (propagate). ``start``: the sink has not
        seen this table yet (ensure_table even when nothing changed)."""
        assert self.applied is not None
        w = self.watch
        target, incompatible = destination_schema(self.applied, w.schema)
        if incompatible - self.incompatible:
            log.error(
                "column re-added with a type the destination cannot hold; its events go to the validation queue",
                table=self.table, destination=self.destination, columns=sorted(incompatible),
            )  # fmt: skip
        self.incompatible = incompatible
        self.applied_version = w.version
        if target == self.applied:
            if start:
                await self._ensure(target)
            return
        added = sorted(set(c.name for c in target.columns) - self._names)
        try:
            await self._apply(target)
        except SchemaMismatch as exc:
            # a table the user created (or create_tables off): cdcd never adds columns to it
            if not isinstance(exc, UnmanagedTable) and getattr(self.mapping, "create", True):
                raise
            self._once(
                f"user-table:{added}",
                "destination table was not created by cdcd: new source columns are not added; "
                "events are written without them",
                columns=added, detail=scrub(str(exc)),
            )  # fmt: skip
            await self._ensure(self.applied)
            return
        if self.on_altered is not None:
            await self.on_altered()  # e.g. the destination's validator reads the table again
        if added:
            log.info(
                "destination table altered",
                table=self.table, destination=self.destination, added=added,
                columns=column_list(target),
            )  # fmt: skip

    def _udt_fields(self) -> dict[str, frozenset[str]]:
        """Top-level UDT columns of the destination -> the fields its type has (values are cut to
        them: the source type may have gained fields before the watcher noticed)."""
        if self.applied is None:
            return {}
        if self._udt_key != id(self.applied):
            self._udt_key = id(self.applied)
            self._udt_cache = {
                c.name: frozenset(c.type.udt.field_names)
                for c in self.applied.columns
                if c.type.udt is not None
            }
        return self._udt_cache

    def _once(self, key: str, msg: str, **fields: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(msg, table=self.table, destination=self.destination, **fields)

    # ------------------------------------------------------------------------------- admit
    async def admit(
        self, events: Sequence[ChangeEvent], set_state: Callable[[str], None] | None = None
    ) -> AsyncIterator[GatePart]:
        """The parts of ``events`` to write, in order; waits while the table is halted."""
        if self.applied is None:
            await self.ensure()
        w = self.watch
        i = 0
        n = len(events)
        if w.policy == "halt" and w.halt is None and any(touched(ev) - self._names for ev in events):
            await self.watcher.force_check(self.table)  # the reader saw the change before the watcher
        while i < n:
            if w.halt is not None:
                since = w.halt.since_us
                j = i
                while j < n and events[j].write_time_us < since and touched(events[j]) <= self._names:
                    j += 1
                if j > i:
                    yield await self._part(events[i:j])
                    i = j
                if i < n:
                    if set_state is not None:
                        set_state("halted")
                    log.error(
                        "table halted by a schema change: waiting for an operator (cdcd resume --table)",
                        table=self.table, destination=self.destination, reason=w.halt.reason,
                    )  # fmt: skip
                    await self.watcher.wait_halted(self.table)
                    if set_state is not None:
                        set_state("running")
                continue
            yield await self._part(events[i:])
            break

    async def _part(self, events: Sequence[ChangeEvent]) -> GatePart:
        w = self.watch
        unknown: set[str] = set()
        for ev in events:
            unknown |= touched(ev) - self._names
        if self._follows() and (w.version != self.applied_version or unknown):
            async with self._lock:
                if unknown and not unknown <= {c.name for c in w.schema.columns}:
                    await self.watcher.force_check(self.table)  # the reader saw it before the watcher
                if self._follows():  # (a halt the check just found keeps the destination as it is)
                    await self._move()
        elif w.version != self._seen_version and self.applied is not None:
            # not following (log, or halted): the destination stays; a column re-added with a type
            # it cannot hold is still left out of the writes (validation queue), never dead-lettered
            _, self.incompatible = destination_schema(self.applied, w.schema)
            self._seen_version = w.version
        if self.watch.policy == "log" and unknown:
            self._once(
                f"log:{sorted(unknown)}",
                "schema_changes = log: the destination is not altered; these columns are left out",
                columns=sorted(unknown),
            )  # fmt: skip
        out: list[ChangeEvent] = []
        rejected: list[RejectionLike] = []
        names = self._names
        bad = self.incompatible
        udts = self._udt_fields()
        if udts:
            events = [trim_udts(ev, udts) for ev in events]
        for ev in events:
            cols = touched(ev)
            hit = cols & bad
            if hit:  # the event goes to the validation queue; its other columns are written
                assert self.applied is not None
                c = sorted(hit)[0]
                rejected.append(
                    Rejection(
                        event=ev,
                        stage="schema",
                        reason=(
                            f"column {c!r} of {self.table} was re-added as "
                            f"{w.schema.column(c).type.cql()}; the destination column holds "
                            f"{self.applied.column(c).type.cql()} (incompatible schema change): "
                            "the event was written without it"
                        ),
                    )
                )
                out.append(strip(ev, names - bad))
            elif cols <= names:
                out.append(ev)
            else:
                out.append(strip(ev, names))
        return GatePart(out, rejected)
