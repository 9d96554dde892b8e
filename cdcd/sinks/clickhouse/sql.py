"""SQL text for the ClickHouse sink. Identifiers are validated and backquoted; values are never
interpolated (reads use server-side parameters ``{name:Type}``, writes are Native inserts).

A ``ChLayout`` is one physical table receiving full rows: the main table (one row per Scylla row,
ordered by the primary key) or ``<table>_static`` (one row per partition, its static columns).
Both are ``ReplacingMergeTree(_cdc_version, _cdc_is_deleted)`` so ``SELECT .. FINAL`` shows the
newest version of every live row; metadata columns:

* ``_cdc_version UInt64``: write time (µs) of the change that produced the row version;
* ``_cdc_is_deleted UInt8``: 1 on delete markers (hard deletes), hidden by ``FINAL``;
* ``_cdc_deleted UInt8`` + ``_cdc_deleted_at``: soft deletes (row kept, flagged);
* ``_cdc_row_marker UInt8``: the row was INSERTed (survives all its columns becoming null);
* ``_cdc_empty Array(String)``: frozen collection columns holding an *empty value* (not null):
  ``Array``/``Map`` cannot be ``Nullable``, so an empty frozen collection and null would look the
  same, and a row kept alive only by one would vanish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from cdcd.schema import Column, TableSchema
from cdcd.sinks.clickhouse.types import LIST_KEYS_PREFIX, column_type, nullable_ok
from cdcd.sinks.clickhouse.types import quote_ident as ident
from cdcd.sinks.layout import Layout

__all__ = [
    "DELETED",
    "DELETED_AT",
    "EMPTY",
    "IS_DELETED",
    "MARKER",
    "META_COLUMNS",
    "VERSION",
    "ChLayout",
    "history_columns",
    "history_ddl",
    "ident",
    "layouts_for",
    "read_sql",
    "table_ddl",
]

VERSION = "_cdc_version"
IS_DELETED = "_cdc_is_deleted"
DELETED = "_cdc_deleted"
DELETED_AT = "_cdc_deleted_at"
MARKER = "_cdc_row_marker"
EMPTY = "_cdc_empty"
META_COLUMNS = (VERSION, IS_DELETED, DELETED, DELETED_AT, MARKER, EMPTY)
_META_TYPES = {
    VERSION: "UInt64",
    IS_DELETED: "UInt8",
    DELETED: "UInt8",
    DELETED_AT: "Nullable(DateTime64(6, 'UTC'))",
    MARKER: "UInt8",
    EMPTY: "Array(String)",
}
_TABLE_SETTINGS = "non_replicated_deduplication_window = 1000"


class ChLayout(Layout, frozen=True, kw_only=True):
    """One ClickHouse table (``Layout``) in ``database``; ``key`` is its ORDER BY."""

    meta_columns: ClassVar[tuple[str, ...]] = META_COLUMNS

    database: str
    partition_width: int  # leading key columns forming the partition key

    @property
    def name(self) -> str:
        return f"{ident(self.database)}.{ident(self.table)}"

    def column_types(self) -> dict[str, str]:
        """Physical column -> ClickHouse type, in table order."""
        out = {c.name: column_type(c.type, key=True) for c in self.key}
        for c in self.values:
            out[c.name] = column_type(c.type, key=False)
            if c.name in self.list_keys:
                out[LIST_KEYS_PREFIX + c.name] = "Array(UUID)"
        out.update(_META_TYPES)
        return out

    def key_types(self) -> list[str]:
        return [column_type(c.type, key=True) for c in self.key]


def layouts_for(schema: TableSchema, database: str, table: str) -> tuple[ChLayout, ChLayout | None]:
    """The main table layout, and the static side table layout when the source has static columns.
    Raises ValueError for identifiers ClickHouse cannot hold."""
    lists = {c.name for c in schema.columns if c.type.name == "list" and c.type.is_multicell}
    pk = schema.partition_key
    main = ChLayout(
        database=database,
        table=table,
        key=schema.primary_key,
        partition_width=len(pk),
        clustering_order=schema.clustering_order,
        values=schema.regular_columns,
        list_keys=tuple(c.name for c in schema.regular_columns if c.name in lists),
    )
    static = None
    if schema.static_columns:
        static = ChLayout(
            database=database,
            table=f"{table}_static",
            key=pk,
            partition_width=len(pk),
            clustering_order=(),
            values=schema.static_columns,
            list_keys=tuple(c.name for c in schema.static_columns if c.name in lists),
        )
    for layout in (main, static):
        if layout is not None:
            for col in layout.all_columns():
                ident(col)
            layout.column_types()  # every type has a mapping
            ident(layout.table)
    ident(database)
    ident(table + "_history")
    return main, static


def table_ddl(layout: ChLayout, overrides: Mapping[str, str] | None = None) -> str:
    """``overrides``: source column -> type, taken as written (column type overrides)."""
    types = layout.column_types()
    types.update({n: t for n, t in (overrides or {}).items() if n in types})
    cols = ", ".join(f"{ident(n)} {t}" for n, t in types.items())
    order = ", ".join(ident(n) for n in layout.key_names)
    settings = _TABLE_SETTINGS
    if any("Nullable(" in t for t in layout.key_types()):
        settings += ", allow_nullable_key = 1"  # tuple/UDT key columns with null fields
    return (
        f"CREATE TABLE IF NOT EXISTS {layout.name} ({cols}) "
        f"ENGINE = ReplacingMergeTree({VERSION}, {IS_DELETED}) ORDER BY ({order}) SETTINGS {settings}"
    )


def history_columns(key: Sequence[Column], partition_width: int) -> dict[str, str]:
    """Columns of ``<table>_history``: one row per delete event; clustering columns are null
    (or empty) for partition and range deletes."""
    cols = {
        "_cdc_stream_id": "String",
        "_cdc_time": "UUID",
        "_cdc_batch_seq": "Int32",
        "_cdc_op": "LowCardinality(String)",
        "_cdc_write_time": "UInt64",
        DELETED_AT: "DateTime64(6, 'UTC')",
    }
    for i, c in enumerate(key):
        optional = i >= partition_width and nullable_ok(c.type)
        cols[c.name] = column_type(c.type, key=not optional)
    cols["_cdc_range"] = "Nullable(String)"
    return cols


def history_ddl(database: str, table: str, key: Sequence[Column], partition_width: int) -> str:
    """Append-only history of deletes (delete = "tombstone"), keyed by CDC position so a replay
    collapses onto the same rows."""
    cols = ", ".join(f"{ident(n)} {t}" for n, t in history_columns(key, partition_width).items())
    return (
        f"CREATE TABLE IF NOT EXISTS {ident(database)}.{ident(table + '_history')} ({cols}) "
        f"ENGINE = ReplacingMergeTree ORDER BY (_cdc_stream_id, _cdc_time, _cdc_batch_seq) "
        f"SETTINGS {_TABLE_SETTINGS}"
    )


def _in(cols: Sequence[str], types: Sequence[str], param: str) -> str:
    if len(cols) == 1:
        return f"{ident(cols[0])} IN {{{param}:Array({types[0]})}}"
    tup = ", ".join(ident(c) for c in cols)
    return f"({tup}) IN {{{param}:Array(Tuple({', '.join(types)}))}}"


def read_sql(layout: ChLayout, by_key: bool, by_partition: bool) -> str:
    """Newest version (delete markers included) of the rows named by parameter ``keys`` (full
    keys) and/or all rows of the partitions in ``parts``. Ties on the version go to deletions,
    which ClickHouse inserted last (a delete wins a timestamp tie, as in Scylla)."""
    names = list(layout.key_names)
    types = layout.key_types()
    cond = []
    if by_key:
        cond.append(_in(names, types, "keys"))
    if by_partition:
        w = layout.partition_width
        cond.append(_in(names[:w], types[:w], "parts"))
    cols = ", ".join(ident(c) for c in layout.all_columns())
    return (
        f"SELECT {cols} FROM {layout.name} WHERE {' OR '.join(cond)} "
        f"ORDER BY {VERSION} DESC, {IS_DELETED} DESC, {DELETED} DESC "
        f"LIMIT 1 BY {', '.join(ident(n) for n in names)}"
    )
