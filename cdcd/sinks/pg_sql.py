"""SQL text for the PostgreSQL sink. Identifiers are validated and always quoted; values are never
interpolated (every value is a parameter or comes from the staging table).

A ``TargetLayout`` describes one physical table that receives rows: the main table (one row per
Scylla row) or the static side table ``<table>_static`` (one row per partition, holding the
static columns). Both carry the metadata columns ``_cdc_write_time`` (µs of the last applied
change: the version guard), ``_cdc_row_marker`` (the row was INSERTed, so it survives all its
columns becoming null), ``_cdc_deleted`` and ``_cdc_deleted_at`` (soft deletes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from cdcd.errors import SchemaMismatch
from cdcd.schema import Column, TableSchema
from cdcd.sinks.pg_types import LIST_KEYS_PREFIX, pg_type

__all__ = [
    "META_COLUMNS",
    "TargetLayout",
    "history_ddl",
    "ident",
    "layouts_for",
    "lexicographic",
    "qualified",
    "table_ddl",
]

WRITE_TIME = "_cdc_write_time"
MARKER = "_cdc_row_marker"
DELETED = "_cdc_deleted"
DELETED_AT = "_cdc_deleted_at"
META_COLUMNS = (WRITE_TIME, MARKER, DELETED, DELETED_AT)
MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by PostgreSQL


def ident(name: str) -> str:
    """Validate and quote one identifier. Refuses what PostgreSQL would truncate or mangle."""
    if not name or len(name.encode()) > MAX_IDENT_BYTES:
        raise SchemaMismatch(f"identifier {name!r} must be 1..{MAX_IDENT_BYTES} bytes for PostgreSQL")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise SchemaMismatch(f"identifier {name!r} contains control characters")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


class TargetLayout(msgspec.Struct, frozen=True, kw_only=True):
    """One physical destination table and how source columns map onto it."""

    schema: str
    table: str
    key: tuple[Column, ...]  # conflict target: primary key (main) or partition key (static)
    clustering_order: tuple[str, ...]  # "asc"/"desc" of the clustering part of ``key``
    values: tuple[Column, ...]  # non-key source columns stored here
    list_keys: tuple[str, ...]  # non-frozen list columns (each has a LIST_KEYS_PREFIX companion)

    @property
    def name(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)

    def value_columns(self) -> list[str]:
        """Physical non-key, non-metadata columns, in table order."""
        out = []
        for c in self.values:
            out.append(c.name)
            if c.name in self.list_keys:
                out.append(LIST_KEYS_PREFIX + c.name)
        return out

    def all_columns(self) -> list[str]:
        return [*self.key_names, *self.value_columns(), *META_COLUMNS]

    def staging_name(self) -> str:
        digest = hashlib.sha1(repr((self.schema, self.table, self.all_columns())).encode()).hexdigest()
        return f"_cdcd_stg_{digest[:16]}"


def layouts_for(
    schema: TableSchema, target_schema: str, target_table: str
) -> tuple[TargetLayout, TargetLayout | None]:
    """The main table layout, and the static side table layout when the source has static columns."""
    lists = tuple(c.name for c in schema.columns if c.type.name == "list" and c.type.is_multicell)
    main = TargetLayout(
        schema=target_schema,
        table=target_table,
        key=schema.primary_key,
        clustering_order=schema.clustering_order,
        values=schema.regular_columns,
        list_keys=tuple(n for n in lists if n in {c.name for c in schema.regular_columns}),
    )
    static = None
    if schema.static_columns:
        static = TargetLayout(
            schema=target_schema,
            table=f"{target_table}_static",
            key=schema.partition_key,
            clustering_order=(),
            values=schema.static_columns,
            list_keys=tuple(n for n in lists if n in {c.name for c in schema.static_columns}),
        )
    for layout in (main, static):
        if layout is not None:
            for col in layout.all_columns():
                ident(col)
            ident(layout.table)
    ident(target_schema)
    return main, static


def column_defs(layout: TargetLayout) -> list[str]:
    defs = [f"{ident(c.name)} {pg_type(c.type)} NOT NULL" for c in layout.key]
    for c in layout.values:
        defs.append(f"{ident(c.name)} {pg_type(c.type)}")
        if c.name in layout.list_keys:
            defs.append(f"{ident(LIST_KEYS_PREFIX + c.name)} uuid[]")
    defs += [
        f"{WRITE_TIME} bigint NOT NULL",
        f"{MARKER} boolean NOT NULL DEFAULT false",
        f"{DELETED} boolean NOT NULL DEFAULT false",
        f"{DELETED_AT} timestamp with time zone",
    ]
    return defs


def table_ddl(layout: TargetLayout) -> str:
    pk = ", ".join(ident(n) for n in layout.key_names)
    return f"CREATE TABLE IF NOT EXISTS {layout.name} ({', '.join(column_defs(layout))}, PRIMARY KEY ({pk}))"


def history_ddl(schema: str, table: str, key: Sequence[Column]) -> str:
    """Append-only history of deletes (delete = "tombstone"); one row per delete event, unique
    by its CDC position so a replay adds nothing."""
    cols = ", ".join(f"{ident(c.name)} {pg_type(c.type)}" for c in key)
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, table + '_history')} ("
        "_cdc_stream_id bytea NOT NULL, _cdc_time uuid NOT NULL, _cdc_batch_seq integer NOT NULL, "
        "_cdc_op text NOT NULL, _cdc_write_time bigint NOT NULL, "
        f"_cdc_deleted_at timestamp with time zone NOT NULL, {cols}, _cdc_range jsonb, "
        "PRIMARY KEY (_cdc_stream_id, _cdc_time, _cdc_batch_seq))"
    )


def lexicographic(
    cols: Sequence[str], orders: Sequence[str], first_param: int, inclusive: bool, lower: bool
) -> str:
    """SQL for "row is after (lower) / before (upper) the clustering prefix" in CLUSTERING order.

    ``cols``/``orders`` are the prefix's columns and their order; parameters $first_param.. hold
    the prefix values. DESC columns flip the comparison, so mixed orders are exact (a row-value
    comparison would not be).
    """
    parts: list[str] = []
    n = len(cols)
    for i in range(n):
        asc = orders[i] == "asc" if i < len(orders) else True
        after = lower == asc  # strictly-after comparator in value terms
        op = ">" if after else "<"
        if i == n - 1 and inclusive:
            op += "="
        eqs = [f"{ident(cols[j])} = ${first_param + j}" for j in range(i)]
        parts.append("(" + " AND ".join([*eqs, f"{ident(cols[i])} {op} ${first_param + i}"]) + ")")
    return "(" + " OR ".join(parts) + ")" if parts else "TRUE"
