"""What the daemon and ``cdcd dlq`` build per (table, destination) for dirty data (R-20, R-31):

* ``table_options(mapping, table, dest, cfg)``: the mapping with the table's column type
  overrides for that destination and its ``add_bookkeeping_columns``;
* ``project(schema, ignored)``: the source schema without the table's ``ignore_columns``;
* ``refresh_targets`` / ``refresh_quarantine``: run every few seconds by the daemon: validators
  follow tables altered while cdcd runs, and release keys whose entries were resolved;
* ``undecodable_entries(...)``: dead-letter entries of a CDC log group that cannot be decoded
  (rule ``undecodable``): its raw log rows, the reason, one entry per destination;
* ``branch_stages(...)``: the destination branch's own stages, ``DropColumns`` (ignored columns)
  then the ``Validator`` checked against the destination table's real definition (read from the
  sink's ``target_definition``), seeded with the keys held in quarantine.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from cdcd.config import Config, TableConfig
from cdcd.events import ChangeEvent, Op, Position, timeuuid_to_micros
from cdcd.schema import TableSchema
from cdcd.scylla.decode import UndecodableGroup
from cdcd.sinks import TableMapping
from cdcd.stages import Stage
from cdcd.stages.validate import ColumnRule, DropColumns, Validator, key_text
from cdcd.state.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "branch_stages",
    "project",
    "refresh_quarantine",
    "refresh_targets",
    "table_options",
    "undecodable_entries",
]


def table_options(mapping: TableMapping, table: TableConfig, dest: str, cfg: Config) -> TableMapping:
    types = {name: rules.types[dest] for name, rules in table.columns.items() if dest in rules.types}
    book = cfg.destinations[dest].add_bookkeeping_columns
    if not types and book is None:
        return mapping
    return msgspec.structs.replace(mapping, column_types=types, bookkeeping=book)


def project(schema: TableSchema, ignored: list[str]) -> TableSchema:
    """``schema`` without ``ignored`` columns (key columns cannot be ignored: ValueError)."""
    if not ignored:
        return schema
    names = {c.name for c in schema.columns}
    for name in ignored:
        if name not in names:
            raise ValueError(f"ignore_columns: {schema.qualified} has no column {name!r}")
        if schema.column(name).kind in ("partition_key", "clustering"):
            raise ValueError(f"ignore_columns: {name!r} is a primary key column of {schema.qualified}")
    return msgspec.structs.replace(schema, columns=tuple(c for c in schema.columns if c.name not in ignored))


def rules_of(table: TableConfig) -> dict[str, ColumnRule]:
    return {
        name: ColumnRule(
            not_null=r.not_null,
            max_length=r.max_length,
            pattern=r.pattern,
            min=r.min,
            max=r.max,
            allowed=None if r.allowed is None else tuple(r.allowed),
        )
        for name, r in table.columns.items()
    }


async def branch_stages(
    table: TableConfig,
    dest: str,
    sink: Any,
    mapping: TableMapping,
    schema: TableSchema,
    *,
    deadletters: DeadLetterStore | None,
) -> list[Stage]:
    """The stages of the destination's branch of ``table`` (see the module docstring)."""
    stages: list[Stage] = []
    if table.ignore_columns:
        stages.append(DropColumns(table.ignore_columns))
    describe = getattr(sink, "target_definition", None)
    if describe is None:
        return stages
    target = await describe(mapping)
    held: set[str] = set()
    quarantine = table.on_invalid == "quarantine_key"
    if quarantine and deadletters is not None:
        async for entry in deadletters.iterate("validation", dest, table=table.source):
            held.add(key_text(entry.event.key))
    stages.append(
        Validator(
            target,
            rules_of(table),
            columns=[c.name for c in schema.columns],
            quarantine=quarantine,
            quarantined=held,
        )
    )
    return stages


def _raw(v: Any) -> Any:
    """A raw log cell the dead-letter store can keep: plain values as they are, driver objects
    (sorted sets, serialized maps, durations) as lists/dicts or their repr."""
    if v is None or isinstance(v, str | bytes | bool | int | float | decimal.Decimal | uuid.UUID | dt.date):
        return v
    if isinstance(v, dict) or hasattr(v, "items"):
        try:
            return {str(k): _raw(x) for k, x in v.items()}
        except Exception:
            return repr(v)
    if isinstance(v, list | tuple | set | frozenset) or hasattr(v, "__iter__"):
        try:
            return [_raw(x) for x in v]
        except Exception:
            return repr(v)
    return repr(v)


def undecodable_entries(
    err: UndecodableGroup, generation: int, destinations: list[str], now: float
) -> list[DeadLetter]:
    """Dead-letter entries (one per destination) of an undecodable CDC log group: the event holds
    no change, only ``values["raw_rows"]`` (the log rows as read) at the group's position."""
    pos = Position(generation=generation, stream_id=err.stream_id, time=err.time or uuid.UUID(int=0))
    event = ChangeEvent(
        table=err.table,
        pos=pos,
        batch_seq=-1,
        op=Op.UPDATE,
        write_time_us=timeuuid_to_micros(err.time) if err.time is not None else 0,
        key={},
        values={"raw_rows": [{str(k): _raw(v) for k, v in row.items()} for row in err.rows]},
    )
    return [
        DeadLetterStore.make(
            "dead",
            dest,
            event,
            reason=err.reason,
            stage="decode",
            attempts=0,
            first_failed_at=now,
            rule="undecodable",
        )
        for dest in destinations
    ]


async def refresh_targets(
    stages: Mapping[tuple[str, str], list[Any]], sinks: Mapping[str, Any], cfg: Config
) -> None:
    """Read every destination table's definition again and hand it to its validator, so a table
    altered while cdcd runs (a widened column, a new CHECK) is checked as it is now."""
    tables = {t.source: t for t in cfg.tables}
    for (table, dest), chain in list(stages.items()):
        describe = getattr(sinks.get(dest), "target_definition", None)
        if describe is None or table not in tables:
            continue
        for stage in chain:
            if isinstance(stage, Validator):
                t = tables[table]
                mapping = TableMapping(
                    source=table, target_schema=t.target_schema, target_table=t.target_table
                )
                target = await describe(mapping)
                if target != stage.target:
                    stage.retarget(target)


async def refresh_quarantine(
    stages: Mapping[tuple[str, str], list[Any]], deadletters: DeadLetterStore
) -> None:
    """Tell every quarantining validator which keys still have entries in its validation queue
    (``Validator.refresh``): keys the operator resolved with ``cdcd dlq`` flow again."""
    for (table, dest), chain in list(stages.items()):
        for stage in chain:
            if isinstance(stage, Validator) and stage.quarantine:
                started = time.monotonic()
                keys = {
                    key_text(e.event.key) async for e in deadletters.iterate("validation", dest, table=table)
                }
                stage.refresh(keys, started)
