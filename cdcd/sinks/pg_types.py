"""CQL -> PostgreSQL type map and value conversion (R-05; documented in docs/type-map.md).

``pg_type(t)`` names the column type; ``to_pg(t)`` returns a converter from the canonical value
(cdcd/events.py) to what asyncpg encodes for that column. Collections whose elements are scalars
become arrays; everything nested (maps, tuples, UDTs, collections of collections) becomes
``jsonb`` in the "JSON space" described by ``json_value``. Merging non-frozen collection deltas
happens in PostgreSQL value space (postgres.py reads the current value back), so ``to_pg`` must be
deterministic: the same canonical value always gives the same PostgreSQL value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import math
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from cdcd.events import CqlDuration, timeuuid_sort_key
from cdcd.schema import CqlType

__all__ = [
    "JSON_DECODER",
    "JSON_ENCODER",
    "LIST_KEYS_PREFIX",
    "Converter",
    "contains_nul",
    "identity",
    "is_array",
    "json_key",
    "json_value",
    "nul_check",
    "pg_type",
    "set_sort_key",
    "to_pg",
]

Converter = Callable[[Any], Any]

LIST_KEYS_PREFIX = "_cdc_keys_"  # companion uuid[] column holding a non-frozen list's cell timeuuids

_SCALAR = {
    "ascii": "text",
    "text": "text",
    "varchar": "text",
    "tinyint": "smallint",
    "smallint": "smallint",
    "int": "integer",
    "bigint": "bigint",
    "counter": "bigint",
    "varint": "numeric",
    "decimal": "numeric",
    "float": "real",
    "double": "double precision",
    "boolean": "boolean",
    "uuid": "uuid",
    "timeuuid": "uuid",
    "timestamp": "timestamp with time zone",
    "date": "date",
    "time": "bigint",  # nanoseconds since midnight: lossless (PostgreSQL time has µs)
    "duration": "interval",  # months, days, µs: sub-µs nanoseconds are dropped
    "inet": "inet",
    "blob": "bytea",
}

JSON_ENCODER = msgspec.json.Encoder(decimal_format="number")
JSON_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)


def is_array(t: CqlType) -> bool:
    """list/set of a scalar element type -> a PostgreSQL array."""
    return t.name in ("list", "set") and t.params[0].name in _SCALAR


def pg_type(t: CqlType) -> str:
    if t.name in _SCALAR:
        return _SCALAR[t.name]
    if is_array(t):
        return _SCALAR[t.params[0].name] + "[]"
    return "jsonb"


def _scalar(name: str) -> Converter:
    if name in ("varint", "decimal"):
        return lambda v: None if v is None else (decimal.Decimal(v) if isinstance(v, int) else v)
    if name == "inet":
        return lambda v: None if v is None else ipaddress.ip_address(v)
    if name == "duration":
        return lambda v: None if v is None else (v.months, v.days, v.nanoseconds // 1000)
    return identity


def identity(v: Any) -> Any:
    """The converter of types whose canonical value is already what asyncpg encodes."""
    return v


def to_pg(t: CqlType) -> Converter:
    """Converter canonical value -> asyncpg value for a column of type ``t``."""
    if t.name in _SCALAR:
        return _scalar(t.name)
    if is_array(t):
        elem = _scalar(t.params[0].name)
        if t.name == "set" and t.params[0].name in ("uuid", "timeuuid"):
            return lambda v: None if v is None else sorted((elem(x) for x in v), key=set_sort_key)
        return lambda v: None if v is None else [elem(x) for x in v]
    return lambda v: None if v is None else json_value(v)


def set_sort_key(v: Any) -> Any:
    """Order of set elements in PostgreSQL arrays: CQL order for timeuuids, Python order else."""
    if isinstance(v, uuid.UUID) and v.version == 1:
        return (0, timeuuid_sort_key(v))
    if isinstance(v, uuid.UUID):
        return (1, v.int)
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return v.packed  # CQL inet order: raw address bytes (mixed IPv4/IPv6 do not compare)
    return v


def json_key(k: Any) -> str:
    """A map key as a JSON object key (deterministic text)."""
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if isinstance(k, bytes):
        return "\\x" + k.hex()
    if isinstance(k, dt.datetime | dt.date):
        return k.isoformat()
    if isinstance(k, int | decimal.Decimal | uuid.UUID):
        return str(k)
    if isinstance(k, float):
        return repr(k)
    return JSON_ENCODER.encode(json_value(k)).decode()


def json_value(v: Any) -> Any:
    """A canonical value in JSON space: dicts with str keys, lists, str, int, Decimal, bool, None.

    uuid/inet/timestamps/dates become strings (ISO 8601), blobs ``"\\x<hex>"``, durations
    ``{"months", "days", "nanoseconds"}``, tuples arrays, UDTs objects, maps objects keyed by
    ``json_key``. Non-finite floats become the strings "NaN", "Infinity", "-Infinity".
    """
    if v is None or isinstance(v, str | bool | int | decimal.Decimal):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return decimal.Decimal(repr(v))
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    if isinstance(v, CqlDuration):
        return {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
    if isinstance(v, dict):
        return {json_key(k): json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_value(x) for x in v]
    raise TypeError(f"no JSON form for {type(v).__name__} value")


def _holds_text(t: CqlType) -> bool:
    if t.name in ("ascii", "text", "varchar"):
        return True
    if t.udt is not None and any(_holds_text(f) for f in t.udt.field_types):
        return True
    return any(_holds_text(p) for p in t.params)


def _text_has_nul(v: Any) -> bool:
    return isinstance(v, str) and "\x00" in v


def nul_check(t: CqlType) -> Callable[[Any], bool] | None:
    """A predicate "this canonical value of type ``t`` holds U+0000", or None when values of
    ``t`` cannot hold text at all (checked once per column, not per value)."""
    if t.name in ("ascii", "text", "varchar"):
        return _text_has_nul
    return contains_nul if _holds_text(t) else None


def contains_nul(v: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; such values are bad rows."""
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(contains_nul(k) or contains_nul(x) for k, x in v.items())
    if isinstance(v, list | tuple):
        return any(contains_nul(x) for x in v)
    return False
