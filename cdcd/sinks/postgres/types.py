"""CQL -> PostgreSQL type map and value conversion (R-05; documented in docs/type-map.md).

``pg_type(t)`` names the column type; ``to_pg(t)`` returns a converter from the canonical value
(cdcd/events.py) to what asyncpg encodes for that column. Collections whose elements are scalars
become arrays; everything nested (maps, tuples, UDTs, collections of collections) becomes
``jsonb`` in the "JSON space" described by ``json_value``. Merging non-frozen collection deltas
happens in PostgreSQL value space (the sink reads the current value back), so ``to_pg`` must be
deterministic: the same canonical value always gives the same PostgreSQL value. ``from_pg(t)``
converts back (tests and reconciliation compare canonical values).
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
from cdcd.sinks.layout import LIST_KEYS_PREFIX

__all__ = [
    "JSON_DECODER",
    "JSON_ENCODER",
    "LIST_KEYS_PREFIX",
    "Converter",
    "contains_nul",
    "cql_order_key",
    "from_json",
    "from_pg",
    "identity",
    "is_array",
    "json_key",
    "json_value",
    "nul_check",
    "pg_type",
    "row_key",
    "set_sort_key",
    "to_pg",
]

Converter = Callable[[Any], Any]

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


def row_key(v: Any) -> Any:
    """A hashable stand-in for a PostgreSQL key value (arrays and jsonb keys are lists/dicts);
    equal for what the sink sends and what PostgreSQL returns (jsonb reorders object keys)."""
    if isinstance(v, list | tuple):
        return tuple(row_key(x) for x in v)
    if isinstance(v, dict):
        return ("{}", tuple(sorted((k, row_key(x)) for k, x in v.items())))
    return v


def contains_nul(v: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; such values are bad rows."""
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(contains_nul(k) or contains_nul(x) for k, x in v.items())
    if isinstance(v, list | tuple):
        return any(contains_nul(x) for x in v)
    return False


# -- back: PostgreSQL values -> canonical values (tests, reconciliation) ----------------------------
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _from_json_atomic(name: str) -> Converter:
    if name in ("tinyint", "smallint", "int", "bigint", "counter", "varint", "time"):
        return int
    if name == "decimal":
        return lambda v: v if isinstance(v, decimal.Decimal) else decimal.Decimal(v)
    if name in ("float", "double"):
        return lambda v: _FLOAT_WORDS[v] if isinstance(v, str) else float(v)
    if name in ("uuid", "timeuuid"):
        return uuid.UUID
    if name == "timestamp":
        return dt.datetime.fromisoformat
    if name == "date":
        return dt.date.fromisoformat
    if name == "duration":
        return lambda v: CqlDuration(int(v["months"]), int(v["days"]), int(v["nanoseconds"]))
    if name == "blob":
        return lambda v: bytes.fromhex(v[2:])
    return lambda v: v  # text, ascii, boolean, inet (already its text form)


def _hashable(v: Any) -> Any:
    """Canonical map keys: lists -> tuples, dicts -> item tuples (cdcd.scylla.values.hashable)."""
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((_hashable(k), _hashable(x)) for k, x in v.items())
    return v


def from_json(t: CqlType) -> Converter:
    """Converter from the JSON space of ``json_value`` back to the canonical value of ``t``."""
    if t.name in _SCALAR:
        atomic = _from_json_atomic(t.name)
        return lambda v: None if v is None else atomic(v)
    if t.name in ("list", "set"):
        elem = from_json(t.params[0])
        return lambda v: None if v is None else [elem(x) for x in v]
    if t.name == "tuple":
        parts = [from_json(p) for p in t.params]
        return lambda v: None if v is None else tuple(p(x) for p, x in zip(parts, v, strict=True))
    if t.name == "udt":
        assert t.udt is not None
        fields = list(zip(t.udt.field_names, [from_json(f) for f in t.udt.field_types], strict=True))

        def udt(v: Any) -> Any:
            if v is None:
                return None
            got = dict(v)  # a dict, or (as a map key) a list of [name, value] pairs
            return {name: conv(got.get(name)) for name, conv in fields}

        return udt
    key, val = _map_key(t.params[0]), from_json(t.params[1])

    def mapping(v: Any) -> Any:
        if v is None:
            return None
        items = v.items() if isinstance(v, dict) else v  # (as a map key) a list of pairs
        return {key(k): val(x) for k, x in items}

    return mapping


def _map_key(t: CqlType) -> Converter:
    """Inverse of ``json_key`` for keys of type ``t``."""
    if t.name in ("ascii", "text", "varchar", "inet"):
        return lambda k: k
    if t.name == "boolean":
        return lambda k: k == "true" if isinstance(k, str) else k
    if t.name in ("float", "double"):
        return lambda k: _FLOAT_WORDS[k] if k in _FLOAT_WORDS else float(k)
    if t.name in _SCALAR and t.name != "duration":
        atomic = _from_json_atomic(t.name)
        return lambda k: atomic(k) if isinstance(k, str) else atomic(json_value(k))
    inner = from_json(t)
    return lambda k: _hashable(inner(JSON_DECODER.decode(k) if isinstance(k, str) else k))


def from_pg(t: CqlType) -> Converter:
    """Converter from what the sink's connections read back (its codecs) to the canonical value:
    the inverse of ``to_pg`` up to CQL's normalisations (empty collection = NULL, sets in
    CQL order, non-frozen lists as plain lists, durations below 1 µs dropped)."""
    if t.name in ("varint", "tinyint", "smallint", "int", "bigint", "counter", "time"):
        return lambda v: None if v is None else int(v)
    if t.name == "inet":
        return lambda v: None if v is None else str(v)
    if t.name == "blob":
        return lambda v: None if v is None else bytes(v)
    if t.name in ("uuid", "timeuuid"):  # asyncpg's own UUID subclass -> uuid.UUID
        return lambda v: None if v is None else uuid.UUID(int=v.int)
    if t.name in _SCALAR:
        return lambda v: v
    if is_array(t):
        elem = from_pg(t.params[0])
        return lambda v: None if v is None else [elem(x) for x in v]
    return from_json(t)


def _uuid_key(u: uuid.UUID) -> tuple[int, int, int]:
    """CQL uuid order (approximately Scylla's): version, then time for version 1, then the rest."""
    if u.version == 1:
        return (1, u.time, u.int & ((1 << 64) - 1))
    return (u.version or 0, u.int >> 64, u.int & ((1 << 64) - 1))


def _optional(key: Converter) -> Converter:
    return lambda v: (0,) if v is None else (1, key(v))


def cql_order_key(t: CqlType) -> Converter:
    """A Python sort key of canonical values of ``t`` that follows CQL's order (clustering order
    of range deletes for types PostgreSQL sorts differently)."""
    name = t.name
    if name == "timeuuid":
        return timeuuid_sort_key
    if name == "uuid":
        return _uuid_key
    if name == "inet":
        return lambda v: ipaddress.ip_address(v).packed
    if name in ("ascii", "text", "varchar"):
        return lambda v: v.encode()
    if name in ("list", "set"):
        elem = cql_order_key(t.params[0])
        if name == "set":
            return lambda v: tuple(sorted(elem(x) for x in v))
        return lambda v: tuple(elem(x) for x in v)
    if name == "map":
        k, x = cql_order_key(t.params[0]), cql_order_key(t.params[1])
        return lambda v: tuple(sorted((k(a), x(b)) for a, b in v.items()))
    if name == "tuple":
        parts = [_optional(cql_order_key(p)) for p in t.params]
        return lambda v: tuple(p(x) for p, x in zip(parts, v, strict=False))
    if name == "udt":
        assert t.udt is not None
        fields = [
            (f, _optional(cql_order_key(ft)))
            for f, ft in zip(t.udt.field_names, t.udt.field_types, strict=True)
        ]
        return lambda v: tuple(key(v.get(f)) for f, key in fields)
    return lambda v: v
