"""What the daemon and ``cdcd dlq`` build per (table, destination) for dirty data (R-20, R-31):

* ``table_options(mapping, table, dest, cfg)``: the mapping with the table's column type
  overrides for that destination and its ``add_bookkeeping_columns``;
* ``project(schema, ignored)``: the source schema without the table's ``ignore_columns``;
* ``branch_stages(...)``: the destination branch's own stages, ``DropColumns`` (ignored columns)
  then the ``Validator`` checked against the destination table's real definition (read from the
  sink's ``target_definition``), seeded with the keys held in quarantine.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cdcd.config import Config, TableConfig
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping
from cdcd.stages import Stage
from cdcd.stages.validate import ColumnRule, DropColumns, Validator, key_text
from cdcd.state.deadletter import DeadLetterStore

__all__ = ["branch_stages", "project", "table_options"]


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
