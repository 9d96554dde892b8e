"""SQL text for the PostgreSQL sink. Identifiers are validated and always quoted; values are never
interpolated (every value is a parameter or comes from the staging table).

A ``TargetLayout`` describes one physical table that receives rows: the main table (one row per
Scylla row) or the static side table ``<table>_static`` (one row per partition, holding the
static columns). Both carry the metadata columns ``_cdc_write_time`` (µs of the last applied
change) and ``_cdc_batch_seq`` (its ``cdc$batch_seq_no``): together the version guard,
``_cdc_row_marker`` (the row was INSERTed, so it survives all its
columns becoming null), ``_cdc_deleted`` and ``_cdc_deleted_at`` (soft deletes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import ClassVar

from cdcd.errors import SchemaMismatch
from cdcd.schema import Column, TableSchema
from cdcd.sinks.layout import Layout
from cdcd.sinks.postgres.types import LIST_KEYS_PREFIX, pg_type

__all__ = [
    "META_COLUMNS",
    "TargetLayout",
    "delete_sql",
    "history_ddl",
    "history_insert_sql",
    "ident",
    "layouts_for",
    "lexicographic",
    "qualified",
    "range_rows_sql",
    "rows_by_ctid_sql",
    "skipped_sql",
    "static_view_ddl",
    "table_ddl",
    "upsert_sql",
    "vanish_sql",
    "version_guard",
    "wide_delete_sql",
]

WRITE_TIME = "_cdc_write_time"
SEQ = "_cdc_batch_seq"
MARKER = "_cdc_row_marker"
DELETED = "_cdc_deleted"
DELETED_AT = "_cdc_deleted_at"
META_COLUMNS = (WRITE_TIME, SEQ, MARKER, DELETED, DELETED_AT)
STAGING_COLUMNS = ("_cdcd_seg", "_cdcd_sig")  # segment / statement of a staged row
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


class TargetLayout(Layout, frozen=True, kw_only=True):
    """One PostgreSQL table (``Layout``) in ``schema``; ``key`` is its conflict target."""

    meta_columns: ClassVar[tuple[str, ...]] = META_COLUMNS

    schema: str

    @property
    def name(self) -> str:
        return qualified(self.schema, self.table)

    def staging_name(self) -> str:
        """Name of this layout's TEMP staging table (changes when the columns change)."""
        digest = hashlib.sha1(repr((self.schema, self.table, self.all_columns())).encode()).hexdigest()
        return f"_cdcd_stg_{digest[:16]}"

    def staging_ddl(self) -> str:
        """The staging table: this layout's columns without constraints (a COPY sends only the
        columns a batch uses), plus the segment/statement columns."""
        seg, sig = STAGING_COLUMNS
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {ident(self.staging_name())} ON COMMIT DELETE ROWS AS "
            f"SELECT NULL::integer AS {seg}, NULL::integer AS {sig}, t.* FROM {self.name} AS t WITH NO DATA"
        )


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
            names = [*layout.all_columns(), *STAGING_COLUMNS]
            for col in names:
                ident(col)
            clash = sorted({n for n in names if names.count(n) > 1})
            if clash:
                raise SchemaMismatch(
                    f"source column(s) {clash} of {schema.qualified} clash with cdcd's own columns "
                    f"in {target_schema}.{layout.table}"
                )
            ident(layout.table)
    ident(target_schema)
    return main, static


def column_defs(layout: TargetLayout, types: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(physical column, its DDL) of every column of ``layout``, in ``all_columns()`` order;
    ``types`` overrides the type of source columns (checked by ``convert.check_type_text``)."""
    types = types or {}
    defs = [(c.name, f"{ident(c.name)} {types.get(c.name) or pg_type(c.type)} NOT NULL") for c in layout.key]
    for c in layout.values:
        defs.append((c.name, f"{ident(c.name)} {types.get(c.name) or pg_type(c.type)}"))
        if c.name in layout.list_keys:
            defs.append((LIST_KEYS_PREFIX + c.name, f"{ident(LIST_KEYS_PREFIX + c.name)} uuid[]"))
    defs += [
        (WRITE_TIME, f"{WRITE_TIME} bigint NOT NULL"),
        (SEQ, f"{SEQ} integer NOT NULL DEFAULT 0"),
        (MARKER, f"{MARKER} boolean NOT NULL DEFAULT false"),
        (DELETED, f"{DELETED} boolean NOT NULL DEFAULT false"),
        (DELETED_AT, f"{DELETED_AT} timestamp with time zone"),
    ]
    return defs


def table_ddl(layout: TargetLayout, types: Mapping[str, str] | None = None) -> str:
    pk = ", ".join(ident(n) for n in layout.key_names)
    cols = ", ".join(d for _, d in column_defs(layout, types))
    return f"CREATE TABLE IF NOT EXISTS {layout.name} ({cols}, PRIMARY KEY ({pk}))"


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


def static_view_ddl(main: TargetLayout, static: TargetLayout) -> list[str]:
    """``<table>_view``: what ``SELECT *`` shows in Scylla, i.e. each live row with its partition's
    static cells, and partitions holding only static cells as one row with null clustering columns.
    Dropped and recreated so it follows added columns."""
    name = qualified(main.schema, main.table + "_view")
    pk = static.key_names
    cols = [f"coalesce(m.{ident(k)}, s.{ident(k)}) AS {ident(k)}" for k in pk]
    cols += [f"m.{ident(k)}" for k in main.key_names[len(pk) :]]
    cols += [f"m.{ident(c.name)}" for c in main.values]
    cols += [f"s.{ident(c.name)}" for c in static.values]
    join = " AND ".join(f"m.{ident(k)} = s.{ident(k)}" for k in pk)
    return [
        f"DROP VIEW IF EXISTS {name}",
        f"CREATE VIEW {name} AS SELECT {', '.join(cols)} "
        f"FROM (SELECT * FROM {main.name} WHERE NOT {DELETED}) AS m "
        f"FULL JOIN (SELECT * FROM {static.name} WHERE NOT {DELETED}) AS s ON {join}",
    ]


# CQL types whose PostgreSQL column sorts exactly as CQL sorts them (text under COLLATE "C": byte
# order of UTF-8 = CQL order). Range deletes over other clustering types (uuid/timeuuid, inet,
# collections, tuples, UDTs) are matched in Python with types.cql_order_key.
SQL_ORDERED = frozenset(
    {
        "ascii", "text", "varchar", "tinyint", "smallint", "int", "bigint", "varint", "decimal",
        "float", "double", "boolean", "blob", "timestamp", "date", "time",
    }
)  # fmt: skip
_TEXT = frozenset({"ascii", "text", "varchar"})


def lexicographic(
    cols: Sequence[str],
    orders: Sequence[str],
    first_param: int,
    inclusive: bool,
    lower: bool,
    *,
    text: Sequence[bool] = (),
) -> str:
    """SQL for "row is after (lower) / before (upper) the clustering prefix" in CLUSTERING order.

    ``cols``/``orders`` are the prefix's columns and their order; parameters $first_param.. hold
    the prefix values; ``text[i]`` compares column i under COLLATE "C". DESC columns flip the
    comparison, so mixed orders are exact (a row-value comparison would not be).
    """
    parts: list[str] = []
    n = len(cols)
    for i in range(n):
        asc = orders[i] == "asc" if i < len(orders) else True
        after = lower == asc  # strictly-after comparator in value terms
        op = ">" if after else "<"
        if i == n - 1 and inclusive:
            op += "="
        col = ident(cols[i]) + (' COLLATE "C"' if i < len(text) and text[i] else "")
        eqs = [f"{ident(cols[j])} = ${first_param + j}" for j in range(i)]
        parts.append("(" + " AND ".join([*eqs, f"{col} {op} ${first_param + i}"]) + ")")
    return "(" + " OR ".join(parts) + ")" if parts else "TRUE"


# -- statements of write() -------------------------------------------------------------------------
# Every statement reads one slice of the staging table: $1 = segment, $2 = statement (signature).
# Upserts are guarded by (write time, batch seq): an older change, or the replay of an applied one,
# changes nothing. Deletes are guarded by write time alone, "<=": a tombstone wins over data with
# the same timestamp, as in Scylla.


def version_guard(strategy: str, version: str | None) -> str:
    """The ``ON CONFLICT .. WHERE`` condition: does the staged row (``excluded``) win over the
    stored one (``t``)? See cdcd.sinks.outcome for the strategies. A staged row that does not
    carry the version column (NULL) keeps the row's version."""
    by_time = f"(t.{WRITE_TIME}, t.{SEQ}) < (excluded.{WRITE_TIME}, excluded.{SEQ})"
    if version is None or strategy == "timestamp":
        return by_time
    v = ident(version)
    ev = f"coalesce(excluded.{v}, t.{v})"
    tie = (
        by_time
        if strategy == "hybrid"
        else f"(t.{WRITE_TIME}, t.{SEQ}) <> (excluded.{WRITE_TIME}, excluded.{SEQ})"
    )
    return f"CASE WHEN {ev} > t.{v} THEN true WHEN {ev} < t.{v} THEN false ELSE {tie} END"


def skipped_sql(layout: TargetLayout, version: str | None) -> str:
    """After an upsert of one signature ($1 segment, $2 signature) applied fewer rows than staged:
    the stored rows this transaction did not write (their keys, write time, batch seq and version),
    i.e. the staged rows the version guard skipped."""
    seg, sig = STAGING_COLUMNS
    keys = [f"t.{ident(k)}" for k in layout.key_names]
    v = f"t.{ident(version)}" if version is not None else "NULL"
    join = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in layout.key_names)
    return (
        f"SELECT {', '.join(keys)}, t.{WRITE_TIME}, t.{SEQ}, {v} FROM {layout.name} AS t "
        f"JOIN {ident(layout.staging_name())} AS s ON {join} WHERE s.{seg} = $1 AND s.{sig} = $2 "
        "AND t.xmin::text <> (txid_current() % 4294967296)::text"
    )


def upsert_sql(
    layout: TargetLayout,
    carried: frozenset[str],
    replace: bool,
    soft: bool,
    *,
    deleted: bool = False,
    guard: str | None = None,
    fill: frozenset[str] = frozenset(),
) -> str:
    """Upsert the staged rows of one signature, setting only the ``carried`` columns.

    ``fill``: NOT NULL value columns of a user-created table. When not carried, the candidate
    row takes the current row's value (PostgreSQL checks NOT NULL on it before ON CONFLICT), so a
    partial update of an existing row passes and one that would create a row without it fails.

    ``replace``: the row was deleted earlier in the batch, so every other column becomes NULL.
    ``soft``: a soft-deleted target row is revived the same way (Scylla had deleted it).
    ``deleted``: soft delete of rows the batch wrote: the staged deletion flags are kept.
    """
    seg, sig = STAGING_COLUMNS
    keys = [ident(k) for k in layout.key_names]
    cols = [c for c in layout.value_columns() if c in carried]
    insert_cols = [*keys, *(ident(c) for c in cols), WRITE_TIME, SEQ, MARKER]
    if deleted:
        insert_cols += [DELETED, DELETED_AT]
    sets = [f"{ident(c)} = excluded.{ident(c)}" for c in cols]
    filled = [c for c in layout.value_columns() if c in fill and c not in carried]
    select = [*insert_cols]
    if filled:
        match = " AND ".join(f"c.{k} = s.{k}" for k in keys)
        insert_cols += [ident(c) for c in filled]
        select = [f"s.{c}" for c in select] + [
            f"(SELECT c.{ident(c)} FROM {layout.name} AS c WHERE {match})" for c in filled
        ]
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
    sets += [
        f"{WRITE_TIME} = excluded.{WRITE_TIME}",
        f"{SEQ} = excluded.{SEQ}",
        f"{DELETED} = excluded.{DELETED}" if deleted else f"{DELETED} = false",
        f"{DELETED_AT} = excluded.{DELETED_AT}" if deleted else f"{DELETED_AT} = NULL",
    ]
    return (
        f"INSERT INTO {layout.name} AS t ({', '.join(insert_cols)}) "
        f"SELECT {', '.join(select)} FROM {ident(layout.staging_name())} AS s "
        f"WHERE s.{seg} = $1 AND s.{sig} = $2 "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(sets)} "
        f"WHERE {guard or version_guard('timestamp', None)}"
    )


def _key_join(layout: TargetLayout) -> str:
    return " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in layout.key_names)


def _soft_set(wt: str, seq: str) -> str:
    return (
        f"{DELETED} = true, {DELETED_AT} = to_timestamp({wt} / 1000000.0), {WRITE_TIME} = {wt}, {SEQ} = {seq}"
    )


def delete_sql(layout: TargetLayout, soft: bool) -> str:
    """Row deletes staged with signature -1 ($1 = segment)."""
    seg, sig = STAGING_COLUMNS
    stg = ident(layout.staging_name())
    where = f"s.{seg} = $1 AND s.{sig} = -1 AND {_key_join(layout)} AND t.{WRITE_TIME} <= s.{WRITE_TIME}"
    if soft:
        return (
            f"UPDATE {layout.name} AS t SET {_soft_set(f's.{WRITE_TIME}', f's.{SEQ}')} "
            f"FROM {stg} AS s WHERE {where}"
        )
    return f"DELETE FROM {layout.name} AS t USING {stg} AS s WHERE {where}"


def vanish_sql(layout: TargetLayout, soft: bool) -> str:
    """A row without a row marker whose columns all became null no longer exists in Scylla
    ($1 = segment, $2 = the signatures that nulled something)."""
    seg, sig = STAGING_COLUMNS
    stg = ident(layout.staging_name())
    nulls = " AND ".join(f"t.{ident(c)} IS NULL" for c in layout.value_columns()) or "TRUE"
    where = (
        f"s.{seg} = $1 AND s.{sig} = ANY($2::integer[]) AND {_key_join(layout)} "
        f"AND t.{WRITE_TIME} = s.{WRITE_TIME} AND t.{SEQ} = s.{SEQ} AND NOT t.{MARKER} AND {nulls}"
    )
    if soft:
        return (
            f"UPDATE {layout.name} AS t SET {DELETED} = true, "
            f"{DELETED_AT} = to_timestamp(s.{WRITE_TIME} / 1000000.0) FROM {stg} AS s WHERE {where}"
        )
    return f"DELETE FROM {layout.name} AS t USING {stg} AS s WHERE {where}"


def wide_delete_sql(
    layout: TargetLayout,
    partition_key: Sequence[str],
    bounds: Sequence[tuple[Sequence[str], bool, bool]],
    soft: bool,
) -> str:
    """Partition delete (no ``bounds``) or clustering-range delete of ``layout``.

    Parameters: the partition key values, then each bound's prefix values (``bounds`` holds
    (prefix columns, inclusive, is_lower) per bounded side), then the write time, then (``soft``
    only) the batch seq.
    """
    types = {c.name: c.type.name for c in layout.key}
    cond = [f"{ident(c)} = ${i + 1}" for i, c in enumerate(partition_key)]
    n = len(partition_key)
    for cols, inclusive, lower in bounds:
        if any(types[c] not in SQL_ORDERED for c in cols):
            raise ValueError(f"clustering columns {list(cols)} do not sort in SQL as in CQL")
        text = [types[c] in _TEXT for c in cols]
        cond.append(lexicographic(cols, layout.clustering_order, n + 1, inclusive, lower, text=text))
        n += len(cols)
    wt, seq = f"${n + 1}::bigint", f"${n + 2}::integer"
    cond.append(f"{WRITE_TIME} <= {wt}")
    where = " AND ".join(cond)
    if soft:
        return f"UPDATE {layout.name} SET {_soft_set(wt, seq)} WHERE {where}"
    return f"DELETE FROM {layout.name} WHERE {where}"


def range_rows_sql(layout: TargetLayout, partition_key: Sequence[str]) -> str:
    """Rows of one partition a range delete may remove (``WRITE_TIME <= $n+1``), locked, with
    their clustering columns: for clustering types matched in Python."""
    cond = [f"{ident(c)} = ${i + 1}" for i, c in enumerate(partition_key)]
    cond.append(f"{WRITE_TIME} <= ${len(partition_key) + 1}::bigint")
    ck = [ident(c.name) for c in layout.key[len(partition_key) :]]
    return f"SELECT ctid, {', '.join(ck)} FROM {layout.name} WHERE {' AND '.join(cond)} FOR UPDATE"


def rows_by_ctid_sql(layout: TargetLayout, soft: bool) -> str:
    """Delete (or soft-delete: $2 write time, $3 batch seq) the rows locked by range_rows_sql."""
    if soft:
        return (
            f"UPDATE {layout.name} SET {_soft_set('$2::bigint', '$3::integer')} WHERE ctid = ANY($1::tid[])"
        )
    return f"DELETE FROM {layout.name} WHERE ctid = ANY($1::tid[])"


HISTORY_COLUMNS = (
    "_cdc_stream_id", "_cdc_time", "_cdc_batch_seq", "_cdc_op", "_cdc_write_time", "_cdc_deleted_at",
)  # fmt: skip


def history_insert_sql(schema: str, table: str, key: Sequence[Column]) -> str:
    """One history row per parameter set: HISTORY_COLUMNS, the key columns, then ``_cdc_range``."""
    cols = [*HISTORY_COLUMNS, *(c.name for c in key), "_cdc_range"]
    params = ", ".join(
        f"to_timestamp(${i + 1}::bigint / 1000000.0)" if c == "_cdc_deleted_at" else f"${i + 1}"
        for i, c in enumerate(cols)
    )
    return (
        f"INSERT INTO {qualified(schema, table + '_history')} ({', '.join(ident(c) for c in cols)}) "
        f"VALUES ({params}) ON CONFLICT (_cdc_stream_id, _cdc_time, _cdc_batch_seq) DO NOTHING"
    )
