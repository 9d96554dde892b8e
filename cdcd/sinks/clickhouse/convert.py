"""Columns of user-created ClickHouse tables whose type differs from cdcd's own
(docs/type-map-clickhouse.md, "Existing tables and type overrides").

The sink keeps working in its own value space (``types.to_ch``); ``conversion(cql, got)`` gives the
pair of converters used only on the wire: ``to`` before an insert into a column of type ``got``,
``back`` on what a read-back returns from it. None: ``got`` cannot hold the CQL type (the table
is refused at start-up). Values that would not fit (length, scale, range, labels, unparsable
text) are refused by the validator before the write; ClickHouse refuses the rest (bisection,
validation queue).

=====================================  ==============================================================
CQL                                    ClickHouse column types accepted (Nullable or not, LowCardinality)
=====================================  ==============================================================
ascii, text, varchar                   String, FixedString(n), Enum8/Enum16 (a label), UUID, IPv4,
                                       IPv6, Date, Date32 (ISO-8601 date), DateTime, DateTime64 (ISO time)
tinyint .. bigint, varint              Int8 .. Int256, UInt8 .. UInt256, Decimal(P, S)
decimal                                Decimal(P, S), Decimal32/64/128/256(S)
float, double                          Float32, Float64
timestamp                              DateTime64(p[, tz]) (p >= 3 keeps the milliseconds)
date                                   Date32, Date
anything else                          cdcd's own type only (docs/type-map-clickhouse.md)
=====================================  ==============================================================
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import re
import uuid
from collections.abc import Callable
from typing import Any

from cdcd.schema import CqlType

__all__ = ["WireConversion", "conversion", "inner_type"]

Converter = Callable[[Any], Any]
WireConversion = tuple[Converter, Converter]  # (to the column, back from it)

_TEXT = ("ascii", "text", "varchar")
_INTS = ("tinyint", "smallint", "int", "bigint", "varint")


def inner_type(t: str) -> str:
    """``t`` without ``LowCardinality(..)`` and ``Nullable(..)`` wrappers."""
    t = t.strip()
    for wrapper in ("LowCardinality", "Nullable", "LowCardinality"):
        if t.startswith(wrapper + "(") and t.endswith(")"):
            t = t[len(wrapper) + 1 : -1].strip()
    return t


def _nn(fn: Converter) -> Converter:
    return lambda v: None if v is None else fn(v)


def _same(v: Any) -> Any:
    return v


def _parse_ts(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    t = dt.datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _ts_text(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)).isoformat()
    return v


def _fixed_back(v: Any) -> Any:
    return v.rstrip(b"\0").decode() if isinstance(v, bytes) else v


def _fixed_to(size: int) -> Converter:
    """Text into ``FixedString(size)``: UTF-8, padded with NUL bytes as ClickHouse stores it;
    longer text is refused (ValueError), never cut."""

    def to(v: Any) -> Any:
        b = v.encode() if isinstance(v, str) else v
        if len(b) > size:
            raise ValueError(f"{len(b)} bytes do not fit FixedString({size})")
        return b.ljust(size, b"\0")

    return to


def _enum_to(inner: str) -> Converter:
    """A label into its ``Enum8/16`` value; an unknown label is refused (ValueError): the client
    would send 0 for it."""
    labels = {
        m.group(1).replace("\\'", "'"): int(m.group(2))
        for m in re.finditer(r"'((?:[^'\\]|\\.)*)'\s*=\s*(-?\d+)", inner)
    }

    def to(v: Any) -> Any:
        if v not in labels:
            raise ValueError(f"{v!r:.60} is not a label of {inner}")
        return labels[v]

    return to


def conversion(t: CqlType, got: str) -> WireConversion | None:
    inner = inner_type(got)
    base = inner.split("(", 1)[0]
    name = t.name
    decimal_col = base in ("Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256")
    if name in _TEXT:
        if base == "String":
            return _same, _same
        if base.startswith("Enum"):
            return _nn(_enum_to(inner)), _same
        if base == "FixedString":
            return _nn(_fixed_to(int(inner[len(base) + 1 : -1]))), _nn(_fixed_back)
        if base == "UUID":
            return _nn(lambda v: uuid.UUID(v) if isinstance(v, str) else v), _nn(str)
        if base in ("IPv4", "IPv6"):
            return _nn(lambda v: ipaddress.ip_address(v) if isinstance(v, str) else v), _nn(str)
        if base in ("Date", "Date32"):
            return (
                _nn(lambda v: dt.date.fromisoformat(v) if isinstance(v, str) else v),
                _nn(lambda v: v.isoformat() if isinstance(v, dt.date) else v),
            )
        if base in ("DateTime", "DateTime64"):
            return _nn(_parse_ts), _nn(_ts_text)
        return None
    if name in _INTS:
        if re.fullmatch(r"U?Int(8|16|32|64|128|256)", inner):
            return _same, _same
        if decimal_col:
            return _nn(decimal.Decimal), _nn(lambda v: int(v) if isinstance(v, decimal.Decimal) else v)
        return None
    if name == "decimal":
        if decimal_col:
            return _nn(decimal.Decimal), _nn(lambda v: str(v) if isinstance(v, decimal.Decimal) else v)
        return None
    if name in ("float", "double"):
        return (_same, _same) if inner in ("Float32", "Float64") else None
    if name == "timestamp":
        return (_same, _same) if base == "DateTime64" else None
    if name == "date":
        return (_same, _same) if base in ("Date32", "Date") else None
    return None
