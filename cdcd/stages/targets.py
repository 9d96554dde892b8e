"""What a destination table really is: its columns as the destination defines them (R-20, R-31).

Read once at start-up (and after every ``ensure_table``) from the destination's catalog, never
assumed from the source schema: user-created tables have narrower types and constraints than
CQL's. The validator (``cdcd.stages.validate``) checks every event against this definition before
the write; the sinks convert values into these types where the conversion is exact.

* PostgreSQL/TimescaleDB: ``pg_attribute``/``pg_type`` (``format_type`` spelling, NOT NULL,
  ``information_schema._pg_char_max_length``/``_pg_numeric_precision``/``_pg_numeric_scale``,
  enum labels) and ``pg_constraint`` CHECK constraints. A CHECK made only of comparisons of
  one column with a literal, joined by AND (``qty >= 0``, ``price < 1000``,
  ``status = ANY (ARRAY['a'::text, 'b'::text])``, ``char_length(code) <= 3``) is evaluated by
  the validator; any other CHECK is left to the destination (a refused row then reaches the
  validation queue through the sink's bisection, SQLSTATE 23514).
* ClickHouse: ``system.columns`` types (``Nullable``, ``LowCardinality``, ``Decimal(P, S)`` and
  ``DecimalNN(S)``, ``FixedString(n)``, ``Enum8/16``, integer widths, ``Date``/``Date32``/
  ``DateTime``/``DateTime64`` ranges, ``UUID``, ``IPv4``/``IPv6``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

__all__ = [
    "Check",
    "TargetColumn",
    "TargetKind",
    "TargetTable",
    "ch_column",
    "parse_pg_check",
    "pg_column",
]

TargetKind = Literal[
    "int", "decimal", "float", "text", "json", "timestamp", "date", "uuid", "inet", "bool", "bytes", "other"
]


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One evaluable comparison of a CHECK constraint: ``column op literal`` (``op`` one of
    ``>= <= > < = <> in``; ``length`` compares the value's length in characters)."""

    constraint: str
    column: str
    op: str
    value: Any  # Decimal, str, or a tuple of them for "in"
    length: bool = False


class TargetColumn(msgspec.Struct, frozen=True, kw_only=True):
    """One column of a destination table, as the destination defines it."""

    name: str
    type: str  # as the destination spells it: "character varying(50)", "Decimal(18, 2)"
    kind: TargetKind = "other"
    nullable: bool = True
    has_default: bool = False
    max_length: int | None = None  # characters (PostgreSQL) or bytes (ClickHouse FixedString)
    length_in_bytes: bool = False
    precision: int | None = None  # total digits of a decimal
    scale: int | None = None  # digits after the point of a decimal
    int_range: tuple[int, int] | None = None  # inclusive bounds of an integer type
    float32: bool = False  # a 4-byte float (PostgreSQL real, ClickHouse Float32)
    date_range: tuple[dt.date, dt.date] | None = None  # what a date/time type can hold
    labels: tuple[str, ...] | None = None  # enum labels
    nul_free: bool = False  # text that cannot hold U+0000 (PostgreSQL)


class TargetTable(msgspec.Struct, frozen=True, kw_only=True):
    """A destination table: ``where`` ("pg schema.table"), its columns and evaluable checks;
    ``unchecked`` names the CHECK constraints the validator cannot evaluate."""

    where: str
    columns: dict[str, TargetColumn]
    checks: tuple[Check, ...] = ()
    unchecked: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ PostgreSQL
_PG_INTS = {"int2": (-(2**15), 2**15 - 1), "int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1)}
_PG_KINDS: dict[str, TargetKind] = {
    "int2": "int", "int4": "int", "int8": "int", "numeric": "decimal", "float4": "float",
    "float8": "float", "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
    "json": "json", "jsonb": "json", "timestamptz": "timestamp", "timestamp": "timestamp",
    "date": "date", "uuid": "uuid", "inet": "inet", "cidr": "inet", "bool": "bool", "bytea": "bytes",
}  # fmt: skip


def pg_column(row: Mapping[str, Any]) -> TargetColumn:
    """A column from the catalog query of ``PG_COLUMNS_SQL``."""
    base = str(row["base"])
    kind: TargetKind = "text" if row["labels"] else _PG_KINDS.get(base, "other")
    return TargetColumn(
        name=str(row["name"]),
        type=str(row["type"]),
        kind=kind,
        nullable=not row["notnull"],
        has_default=bool(row["has_default"]),
        max_length=row["max_length"] if kind == "text" else None,
        precision=row["precision"] if kind == "decimal" else None,
        scale=row["scale"] if kind == "decimal" else None,
        int_range=_PG_INTS.get(base),
        float32=base == "float4",
        date_range=(dt.date(1, 1, 1), dt.date(9999, 12, 31)) if kind in ("date", "timestamp") else None,
        labels=tuple(row["labels"]) if row["labels"] else None,
        nul_free=kind in ("text", "json"),
    )


PG_COLUMNS_SQL = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
       t.typname AS base, a.atthasdef AS has_default,
       information_schema._pg_char_max_length(a.atttypid, a.atttypmod) AS max_length,
       information_schema._pg_numeric_precision(a.atttypid, a.atttypmod) AS precision,
       information_schema._pg_numeric_scale(a.atttypid, a.atttypmod) AS scale,
       (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e
         WHERE e.enumtypid = a.atttypid) AS labels
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

PG_CHECKS_SQL = """
SELECT conname::text AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint
WHERE conrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2)) AND contype = 'c'
ORDER BY conname
"""

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CAST = r"(?:::[a-z ]+(?:\(\d+(?:,\d+)?\))?)*"
_NUM = r"\(?'?(-?\d+(?:\.\d+)?)'?\)?" + _CAST
_STR = r"'((?:[^']|'')*)'" + _CAST
_ATOM = re.compile(
    rf"^\(*(?P<len>char_length|length)?\(*(?P<col>{_IDENT})(?:{_CAST}|\))*\s*"
    rf"(?P<op>>=|<=|<>|>|<|=)\s*(?:(?P<num>{_NUM})|(?P<str>{_STR})|ANY\s*\(ARRAY\[(?P<arr>.*)\]\))\)*$"
)
_ARR_ITEM = re.compile(rf"\s*(?:{_STR}|{_NUM})\s*(?:,|$)")


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def _split_and(text: str) -> list[str] | None:
    """Top-level ``AND`` operands of a CHECK body; None when it holds OR/NOT/CASE at that level."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    in_str = False
    while i < len(text):
        ch = text[i]
        if ch == "'":
            in_str = not in_str
        elif not in_str:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif depth == 0 and text.startswith(" AND ", i):
                parts.append(text[start:i])
                start = i + 5
                i += 5
                continue
            elif depth == 0 and (text.startswith(" OR ", i) or text.startswith("NOT ", i)):
                return None
        i += 1
    parts.append(text[start:])
    return parts


def _strip_outer(text: str) -> str:
    """Remove parentheses wrapping the whole text."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1].strip()
    return text


def parse_pg_check(name: str, definition: str) -> list[Check] | None:
    """The comparisons of one ``pg_get_constraintdef`` text, or None when the validator cannot
    evaluate it (the destination then enforces it alone)."""
    m = re.fullmatch(r"CHECK \((.*)\)(?: NOT VALID)?", definition.strip(), re.S)
    if not m:
        return None
    parts = _split_and(_strip_outer(m.group(1)))
    if parts is None:
        return None
    out: list[Check] = []
    for raw in parts:
        part = _strip_outer(raw)
        a = _ATOM.match(part)
        if a is None:
            if re.fullmatch(rf"\(*{_IDENT}\s+IS NOT NULL\)*", part):
                continue  # NOT NULL is checked from the column definition
            return None
        col, op = _unquote(a.group("col")), a.group("op")
        length = a.group("len") is not None
        value: Any
        if a.group("arr") is not None:
            if op != "=":
                return None
            items = [
                x.group(1) if x.group(1) is not None else x.group(2)
                for x in _ARR_ITEM.finditer(a.group("arr"))
            ]
            if not items:
                return None
            value = tuple(items)
            op = "in"
        elif a.group("num") is not None:
            value = decimal.Decimal(re.sub(r"[()'\s]|::.*", "", a.group("num")))
        else:
            value = re.sub(r"::.*$", "", a.group("str"))[1:-1].replace("''", "'")
        out.append(Check(constraint=name, column=col, op=op, value=value, length=length))
    return out


# ------------------------------------------------------------------------------------ ClickHouse
_CH_DECIMAL_P = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}
# What each type can store (Date32 and DateTime64 store years 1..9999 exactly; only ClickHouse's
# date functions are limited to 1900..2299, docs/type-map-clickhouse.md).
_CH_DATES = {
    "Date": (dt.date(1970, 1, 1), dt.date(2149, 6, 6)),
    "Date32": (dt.date(1, 1, 1), dt.date(9999, 12, 31)),
    "DateTime": (dt.date(1970, 1, 1), dt.date(2106, 2, 6)),
    "DateTime64": (dt.date(1, 1, 1), dt.date(9999, 12, 31)),
}
# Composite types: cdcd stores a null collection as an empty one, so they are never "NOT NULL".
_CH_COMPOSITE = ("Array", "Map", "Tuple", "Nested")


def _unwrap(t: str, wrapper: str) -> tuple[str, bool]:
    if t.startswith(wrapper + "(") and t.endswith(")"):
        return t[len(wrapper) + 1 : -1], True
    return t, False


def ch_column(name: str, type_: str, default_kind: str = "") -> TargetColumn:
    """A column from ``system.columns`` (name, type, default_kind)."""
    t, _ = _unwrap(type_.strip(), "LowCardinality")
    t, nullable = _unwrap(t, "Nullable")
    base = t.split("(", 1)[0]
    nullable = nullable or base in _CH_COMPOSITE
    args = t[len(base) + 1 : -1] if "(" in t else ""
    kw: dict[str, Any] = {}
    kind: TargetKind = "other"
    m = re.fullmatch(r"(U?)Int(8|16|32|64|128|256)", t)
    if m:
        bits = int(m.group(2))
        kind = "int"
        kw["int_range"] = (0, 2**bits - 1) if m.group(1) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    elif base == "Decimal":
        p, s = (int(x) for x in args.split(","))
        kind, kw["precision"], kw["scale"] = "decimal", p, s
    elif base in _CH_DECIMAL_P:
        kind, kw["precision"], kw["scale"] = "decimal", _CH_DECIMAL_P[base], int(args)
    elif t in ("Float32", "Float64"):
        kind, kw["float32"] = "float", t == "Float32"
    elif t == "String":
        kind = "text"
    elif base == "FixedString":
        kind, kw["max_length"], kw["length_in_bytes"] = "text", int(args), True
    elif base in ("Enum8", "Enum16", "Enum"):
        kind = "text"
        kw["labels"] = tuple(x.replace("\\'", "'") for x in re.findall(r"'((?:[^'\\]|\\.)*)'\s*=", args))
    elif base in _CH_DATES:
        kind = "date" if base.startswith("Date") and not base.startswith("DateTime") else "timestamp"
        kw["date_range"] = _CH_DATES[base]
    elif t == "UUID":
        kind = "uuid"
    elif t in ("IPv4", "IPv6"):
        kind = "inet"
    elif t == "Bool":
        kind = "bool"
    return TargetColumn(
        name=name, type=type_, kind=kind, nullable=nullable, has_default=bool(default_kind), **kw
    )


CH_COLUMNS_SQL = (
    "SELECT name, type, default_kind FROM system.columns "
    "WHERE database = {db:String} AND table = {t:String} ORDER BY position"
)


def table_from_rows(
    where: str, columns: Sequence[TargetColumn], checks: Sequence[tuple[str, str]] = ()
) -> TargetTable:
    """A ``TargetTable`` from its columns and its CHECK constraints (name, definition)."""
    evaluable: list[Check] = []
    unchecked: list[str] = []
    for name, definition in checks:
        parsed = parse_pg_check(name, definition)
        if parsed is None:
            unchecked.append(name)
        else:
            evaluable.extend(parsed)
    return TargetTable(
        where=where, columns={c.name: c for c in columns}, checks=tuple(evaluable), unchecked=tuple(unchecked)
    )
