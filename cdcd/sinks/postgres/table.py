"""Per-table state of the PostgreSQL sink and its table set-up: connection codecs, the statement
texts of one mapping (built once, prepared once per connection by asyncpg), and the DDL checks of
``ensure_table``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import asyncpg

from cdcd.errors import MANAGED_COMMENT, SchemaMismatch, UnmanagedTable
from cdcd.events import CqlDuration
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping
from cdcd.sinks.outcome import check_version_column, version_column
from cdcd.sinks.postgres.convert import conversion
from cdcd.sinks.postgres.fold import TableCodec
from cdcd.sinks.postgres.sql import (
    DELETED,
    STAGING_COLUMNS,
    TargetLayout,
    column_defs,
    delete_sql,
    history_insert_sql,
    ident,
    layouts_for,
    range_rows_sql,
    rows_by_ctid_sql,
    skipped_sql,
    table_ddl,
    upsert_sql,
    vanish_sql,
    version_guard,
    wide_delete_sql,
)
from cdcd.sinks.postgres.types import JSON_DECODER, JSON_ENCODER, Converter, identity, pg_type

__all__ = [
    "DELETE_SIG",
    "READ_BACK",
    "PgTable",
    "ensure_layout",
    "init_connection",
    "not_null_columns",
    "require_columns",
]

_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
READ_BACK = -2  # staging signature of keys whose current collection values are read back
DELETE_SIG = -1  # staging signature of row deletes


def _date_enc(d: dt.date) -> tuple[int]:
    return (d.toordinal() - _PG_EPOCH_DATE.toordinal(),)


def _date_dec(t: tuple[int]) -> dt.date:
    return dt.date.fromordinal(t[0] + _PG_EPOCH_DATE.toordinal())


def _ts_enc(v: dt.datetime) -> tuple[int]:
    if v.tzinfo is None:  # the canonical form is aware UTC; a naive value means UTC too
        v = v.replace(tzinfo=dt.UTC)
    delta = v - _PG_EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)


def _ts_dec(t: tuple[int]) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=t[0])


class PgTable:
    """Everything the sink knows about one mapping: layouts, converters, statement texts."""

    def __init__(
        self,
        mapping: TableMapping,
        schema: TableSchema,
        convs: Mapping[str, Converter] | None = None,
        fill: frozenset[str] = frozenset(),
    ) -> None:
        self.mapping = mapping
        self.schema = schema
        self.main, self.static = layouts_for(schema, mapping.target_schema, mapping.target_table)
        keys_only = schema.cdc.delta == "keys"
        if keys_only and not schema.cdc.postimage:
            raise SchemaMismatch(
                f"{schema.qualified} has cdc delta 'keys' without postimage: its CDC log holds no "
                "values to replicate (enable postimage, or delta 'full')"
            )
        check_version_column(mapping, schema)
        self.codec = TableCodec(schema.columns, self.main, self.static, keys_only=keys_only, convs=convs)
        self.soft = mapping.delete == "soft"
        self.fill = fill  # NOT NULL value columns of a user-created table (upsert_sql)
        self.history_sql = history_insert_sql(mapping.target_schema, mapping.target_table, schema.primary_key)
        self._sql: dict[Any, str] = {}

    def version(self, layout: TargetLayout) -> str | None:
        """The version column guarding ``layout`` (None: write time alone)."""
        name = version_column(self.mapping)
        return name if name is not None and any(c.name == name for c in layout.values) else None

    def sql(self, kind: str, layout: TargetLayout, *args: Any) -> str:
        """Statement text, built once per (kind, layout, shape); asyncpg then prepares it once per
        connection (its statement cache)."""
        key = (kind, layout.table, *args)
        text = self._sql.get(key)
        if text is None:
            if kind == "upsert":
                guard = version_guard(self.mapping.staleness, self.version(layout))
                text = upsert_sql(
                    layout, args[0], args[1], self.soft, deleted=args[2], fill=self.fill, guard=guard
                )
            elif kind == "skipped":
                text = skipped_sql(layout, self.version(layout))
            elif kind == "delete":
                text = delete_sql(layout, self.soft)
            elif kind == "vanish":
                text = vanish_sql(layout, self.soft)
            elif kind == "read_back":
                text = _read_back_sql(layout, args[0])
            elif kind == "range_rows":
                text = range_rows_sql(layout, [c.name for c in self.schema.partition_key])
            elif kind == "by_ctid":
                text = rows_by_ctid_sql(layout, self.soft)
            else:
                pk = [c.name for c in self.schema.partition_key]
                text = wide_delete_sql(layout, pk, args[0], self.soft)
            self._sql[key] = text
        return text


def _read_back_sql(layout: TargetLayout, cols: tuple[str, ...]) -> str:
    seg, sig = STAGING_COLUMNS
    keys = layout.key_names
    join = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys)
    return (
        f"SELECT {', '.join(f't.{ident(c)}' for c in (*keys, *cols))} FROM {layout.name} AS t "
        f"JOIN {ident(layout.staging_name())} AS s ON {join} "
        f"WHERE s.{seg} = $1 AND s.{sig} = {READ_BACK} AND NOT t.{DELETED}"
    )


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs every connection of the sink uses (pool ``init``; tests read back with them too)."""
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


async def not_null_columns(conn: asyncpg.Connection, schema: str, table: str) -> set[str]:
    """Columns of an existing table declared NOT NULL."""
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(quote_ident($1) || '.' || "
        "quote_ident($2)) AND attnum > 0 AND NOT attisdropped AND attnotnull",
        schema,
        table,
    )
    return {str(r["attname"]) for r in rows}


async def require_columns(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    """Column name -> type of an existing table; SchemaMismatch when it does not exist."""
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


def _bookkeeping_def(col_def: str) -> str:
    """The DDL of a bookkeeping column added to a table that may hold rows: NOT NULL columns get
    a default (0: older than any change, so the first change of each row applies)."""
    if col_def.endswith("bigint NOT NULL"):
        return col_def + " DEFAULT 0"
    return col_def


async def ensure_layout(
    conn: asyncpg.Connection,
    layout: TargetLayout,
    create: bool,
    *,
    types: Mapping[str, str] | None = None,
    bookkeeping: bool | None = None,
    source: str = "",
) -> dict[str, Converter]:
    """Create (``create``) or check one physical table; add missing columns; accept columns of
    another type where ``convert.conversion`` allows it (returned: column -> converter), refuse
    the others. A source column without a target column is refused unless ``create`` and the
    table is cdcd's (created by it: its comment is ``MANAGED_COMMENT``; ``UnmanagedTable``); cdcd's
    bookkeeping columns are added when ``bookkeeping`` (default: ``create``), else refused with
    the exact ALTER TABLE statements to run."""
    managed = False  # created by cdcd (its comment): only then are source columns added
    if create:
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", layout.name):
            await conn.execute(table_ddl(layout, types))
            await conn.execute(f"COMMENT ON TABLE {layout.name} IS '{MANAGED_COMMENT}'")
            managed = True
        else:
            comment = await conn.fetchval("SELECT obj_description(to_regclass($1), 'pg_class')", layout.name)
            managed = comment == MANAGED_COMMENT
    have = await require_columns(conn, layout.schema, layout.table)
    user = {c.name for c in (*layout.key, *layout.values)}
    add_book = create if bookkeeping is None else bookkeeping
    missing_book: list[str] = []
    for col, col_def in column_defs(layout, types):
        if col in have:
            continue
        if col in user:
            if not create:
                raise SchemaMismatch(
                    f"source column {source or '?'}.{col} has no column in {layout.schema}.{layout.table} "
                    "(create_tables is off): add it, or list it in the table's ignore_columns"
                )
            if not managed:
                raise UnmanagedTable(
                    f"source column {source or '?'}.{col} has no column in {layout.schema}.{layout.table}, "
                    "a table cdcd did not create (it adds columns only to its own tables): add it, "
                    "or list it in the table's ignore_columns"
                )
            await conn.execute(f"ALTER TABLE {layout.name} ADD COLUMN IF NOT EXISTS {col_def}")
        else:
            missing_book.append(f"ALTER TABLE {layout.name} ADD COLUMN {_bookkeeping_def(col_def)};")
    if missing_book:
        if not add_book:
            raise SchemaMismatch(
                f"{layout.schema}.{layout.table} lacks cdcd's bookkeeping columns and this destination "
                "may not add them (add_bookkeeping_columns = false); run: " + " ".join(missing_book)
            )
        for stmt in missing_book:
            await conn.execute(stmt.rstrip(";").replace(" ADD COLUMN ", " ADD COLUMN IF NOT EXISTS ", 1))
    convs: dict[str, Converter] = {}
    wrong: list[str] = []
    for c in (*layout.key, *layout.values):
        want = pg_type(c.type)
        got = have.get(c.name)
        if got is None or got == want:
            continue
        conv = conversion(c.type, got)
        if conv is None:
            wrong.append(
                f"{layout.schema}.{layout.table}.{c.name} is {got}, expected {want} for CQL {c.type.cql()} "
                f"({got} cannot hold it; docs/type-map.md lists the accepted types)"
            )
        elif conv is not identity:
            convs[c.name] = conv
    if wrong:
        raise SchemaMismatch("; ".join(wrong))
    return convs
