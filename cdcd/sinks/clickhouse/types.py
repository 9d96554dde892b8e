"""CQL -> ClickHouse type map and value conversion (R-05; documented in docs/type-map-clickhouse.md).

Three functions per CQL type, all built once per column:

* ``ch_type(t)`` names the ClickHouse type (without the top-level ``Nullable``: ``column_type``
  adds it where ClickHouse allows it).
* ``to_ch(t)`` converts a canonical value (cdcd/events.py) to the "ClickHouse value space": the
  Python value ``clickhouse_connect`` inserts for that type. It validates as it goes and raises
  ``ValueError`` naming what is wrong, so a bad value is found before anything is written.
* ``from_read(t)`` normalises a value read back (with ``String`` read as bytes and tuples as
  tuples) into the same value space, so current rows can be merged and inserted again unchanged.

``order_key(t)`` gives CQL's order for values in that space (set elements, map keys, clustering
ranges); ``freeze`` makes any value hashable (set element identity).

Collections cannot be ``Nullable`` in ClickHouse and CQL collections hold no nulls: an empty
collection stands for null. Tuples, UDTs and durations are ``Nullable(Tuple(...))`` (ClickHouse with
nullable tuples, as the tested 26.9 engine); tuple and UDT fields are ``Nullable`` where possible.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import math
import uuid
from collections.abc import Callable
from typing import Any

from cdcd.events import CqlDuration, timeuuid_sort_key
from cdcd.schema import CqlType
from cdcd.sinks.layout import LIST_KEYS_PREFIX

__all__ = [
    "LIST_KEYS_PREFIX",
    "ColumnConverter",
    "Converter",
    "as_list",
    "ch_type",
    "column_type",
    "freeze",
    "from_read",
    "holds_blob",
    "identity",
    "is_map_array",
    "nullable_ok",
    "order_key",
    "quote_ident",
    "to_ch",
    "to_ch_column",
]

Converter = Callable[[Any], Any]

_SCALAR = {
    "ascii": "String",
    "text": "String",
    "varchar": "String",
    "tinyint": "Int8",
    "smallint": "Int16",
    "int": "Int32",
    "bigint": "Int64",
    "counter": "Int64",
    "varint": "Int256",
    "decimal": "String",  # canonical decimal text: arbitrary precision and scale, lossless
    "float": "Float32",
    "double": "Float64",
    "boolean": "Bool",
    "uuid": "UUID",
    "timeuuid": "UUID",
    "timestamp": "DateTime64(3, 'UTC')",
    "date": "Date32",
    "time": "Int64",  # nanoseconds since midnight
    "duration": "Tuple(months Int32, days Int32, nanoseconds Int64)",
    "inet": "IPv6",  # IPv4 stored IPv4-mapped (::ffff:a.b.c.d)
    "blob": "String",
}
# CQL types whose canonical Python values (of exactly this type) are already ClickHouse values
# (integers still need their range checked).
_EXACT: dict[str, type] = {
    "ascii": str, "text": str, "varchar": str, "uuid": uuid.UUID, "timeuuid": uuid.UUID, "boolean": bool,
    "double": float, "blob": bytes, "tinyint": int, "smallint": int, "int": int, "bigint": int,
    "varint": int,
}  # fmt: skip
_INT_BITS = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64, "counter": 64, "varint": 256}
_FLOAT32_MAX = 3.4028234663852886e38
_TIME_MAX_NS = 86_400_000_000_000
_UTC = dt.UTC


def quote_ident(name: str) -> str:
    """Validate and backquote one ClickHouse identifier (database, table, column, tuple field)."""
    if not name or len(name.encode()) > 200:
        raise ValueError(f"identifier {name!r} must be 1..200 bytes for ClickHouse")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValueError(f"identifier {name!r} contains control characters")
    if len(name) >= 2 and name[0] == name[-1] and name[0] in '`"':
        raise ValueError(f"identifier {name!r} looks already quoted")  # the client would not quote it
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _has_collection(t: CqlType) -> bool:
    if t.is_collection:
        return True
    if t.name == "udt" and t.udt is not None:
        return any(_has_collection(f) for f in t.udt.field_types)
    return any(_has_collection(p) for p in t.params)


def is_map_array(t: CqlType) -> bool:
    """A map whose key holds a collection: ``Array(Tuple(key K, value V))`` (such keys are not
    hashable once read back, so ``Map`` cannot carry them through the client)."""
    return t.name == "map" and _has_collection(t.params[0])


def nullable_ok(t: CqlType) -> bool:
    """ClickHouse can wrap this type in ``Nullable`` (not Array/Map)."""
    return not t.is_collection


def _field(t: CqlType) -> str:
    inner = ch_type(t)
    return f"Nullable({inner})" if nullable_ok(t) else inner


def ch_type(t: CqlType) -> str:
    """The ClickHouse type of a value of CQL type ``t`` (never ``Nullable`` at the top)."""
    if t.name in _SCALAR:
        return _SCALAR[t.name]
    if t.name in ("list", "set"):
        return f"Array({ch_type(t.params[0])})"
    if t.name == "map":
        k, v = (ch_type(p) for p in t.params)
        return f"Array(Tuple(key {k}, value {v}))" if is_map_array(t) else f"Map({k}, {v})"
    if t.name == "tuple":
        return f"Tuple({', '.join(_field(p) for p in t.params)})"
    if t.name == "udt":
        assert t.udt is not None
        fields = zip(t.udt.field_names, t.udt.field_types, strict=True)
        return f"Tuple({', '.join(f'{quote_ident(n)} {_field(ft)}' for n, ft in fields)})"
    raise ValueError(f"CQL type {t.cql()} has no ClickHouse mapping")


def column_type(t: CqlType, key: bool) -> str:
    """Type of a table column: key columns are never null; other columns are Nullable when allowed."""
    inner = ch_type(t)
    return inner if key or not nullable_ok(t) else f"Nullable({inner})"


# ------------------------------------------------------------------------------ canonical -> ClickHouse
def _bad(what: str, v: Any) -> ValueError:
    return ValueError(f"{what}, got {type(v).__name__} {v!r:.80}")


def _scalar_to_ch(name: str) -> Converter:
    """Converters of atomic types; each passes None through (nullability is decided by callers)."""
    if name in ("ascii", "text", "varchar"):

        def text(v: Any) -> Any:
            if type(v) is str or v is None:
                return v
            if isinstance(v, str):
                return str(v)
            raise _bad("expected str", v)

        return text
    if name in _INT_BITS:
        bits = _INT_BITS[name]
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

        def integer(v: Any) -> Any:
            if type(v) is int and lo <= v <= hi:
                return v
            if v is None:
                return None
            if not isinstance(v, int) or isinstance(v, bool):
                raise _bad(f"expected int for {name}", v)
            if not lo <= v <= hi:
                raise ValueError(f"{name} {v} is outside ClickHouse Int{bits} [{lo}, {hi}]")
            return int(v)

        return integer
    if name == "decimal":

        def dec(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, decimal.Decimal | int) or isinstance(v, bool):
                raise _bad("expected Decimal", v)
            d = decimal.Decimal(v)
            if not d.is_finite():
                raise _bad("decimal must be finite", v)
            return str(d)

        return dec
    if name in ("float", "double"):
        single = name == "float"

        def flt(v: Any) -> Any:
            if type(v) is not float:
                if v is None:
                    return None
                if not isinstance(v, float | int) or isinstance(v, bool):
                    raise _bad(f"expected float for {name}", v)
                v = float(v)
            if single and (v > _FLOAT32_MAX or v < -_FLOAT32_MAX) and math.isfinite(v):
                raise ValueError(f"float {v!r} is outside the Float32 range")
            return v

        return flt
    if name == "boolean":

        def boolean(v: Any) -> Any:
            if v is None or type(v) is bool:
                return v
            raise _bad("expected bool", v)

        return boolean
    if name in ("uuid", "timeuuid"):

        def uid(v: Any) -> Any:
            if v is None or type(v) is uuid.UUID:
                return v
            raise _bad(f"expected UUID for {name}", v)

        return uid
    if name == "timestamp":

        def ts(v: Any) -> Any:
            if type(v) is dt.datetime:
                tz = v.tzinfo
                return v if tz is _UTC else (v.replace(tzinfo=_UTC) if tz is None else v.astimezone(_UTC))
            if v is None:
                return None
            raise _bad("expected datetime for timestamp", v)

        return ts
    if name == "date":

        def date(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, dt.date) and not isinstance(v, dt.datetime)):
                raise _bad("expected date", v)
            return v

        return date
    if name == "time":

        def time(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, int) and not isinstance(v, bool)):
                raise _bad("expected int nanoseconds for time", v)
            if not 0 <= v < _TIME_MAX_NS:
                raise ValueError(f"time {v} ns is outside one day")
            return v

        return time
    if name == "duration":

        def duration(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, CqlDuration)):
                raise _bad("expected CqlDuration", v)
            if not (
                -(2**31) <= v.months < 2**31
                and -(2**31) <= v.days < 2**31
                and -(2**63) <= v.nanoseconds < 2**63
            ):
                raise ValueError(f"duration {v!r} is out of range")
            return (v.months, v.days, v.nanoseconds)

        return duration
    if name == "inet":

        def inet(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, str)):
                raise _bad("expected str for inet", v)
            addr = ipaddress.ip_address(v)
            if isinstance(addr, ipaddress.IPv4Address):
                return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + addr.packed)
            return addr

        return inet
    if name == "blob":

        def blob(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, bytes | bytearray | memoryview)):
                raise _bad("expected bytes for blob", v)
            return bytes(v)

        return blob
    raise ValueError(f"CQL type {name} has no ClickHouse mapping")


def _nullable(conv: Converter, t: CqlType) -> Converter:
    """Converter for a position that may hold null (tuple/UDT fields, top-level value columns)."""
    if t.name in ("list", "set"):
        return lambda v: [] if v is None else conv(v)
    if t.name == "map":
        empty: Any = [] if is_map_array(t) else {}
        return lambda v: empty if v is None else conv(v)
    return conv  # atomic, tuple and UDT converters pass None through


def _not_null(conv: Converter, where: str) -> Converter:
    def check(v: Any) -> Any:
        if v is None:
            raise ValueError(f"null is not allowed in a {where}")
        return conv(v)

    return check


def to_ch(t: CqlType, nullable: bool = True) -> Converter:
    """Converter canonical value -> ClickHouse value space for type ``t`` (frozen/full form)."""
    conv = _to_ch(t)
    return _nullable(conv, t) if nullable else _not_null(conv, "key column")


def _to_ch(t: CqlType) -> Converter:
    if t.name in _SCALAR:
        return _scalar_to_ch(t.name)
    if t.name in ("list", "set"):
        elem = _not_null(_to_ch(t.params[0]), t.name)
        exact = _EXACT.get(t.params[0].name)  # elements of this Python type need no conversion
        bits = _INT_BITS.get(t.params[0].name)
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if bits else (0, 0)

        def seq(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, list | tuple | set | frozenset)):
                raise _bad(f"expected a sequence for {t.cql()}", v)
            if (
                exact is not None
                and v
                and set(map(type, v)) == {exact}
                and (bits is None or (lo <= min(v) and max(v) <= hi))
            ):
                return list(v)
            return [elem(x) for x in v]

        return seq
    if t.name == "map":
        kc = _not_null(_to_ch(t.params[0]), "map key")
        vc = _not_null(_to_ch(t.params[1]), "map value")
        as_array = is_map_array(t)

        def mapping(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, dict)):
                raise _bad(f"expected dict for {t.cql()}", v)
            if as_array:
                return [(kc(k), vc(x)) for k, x in v.items()]
            return {kc(k): vc(x) for k, x in v.items()}

        return mapping
    if t.name == "tuple":
        fields = [_nullable(_to_ch(p), p) for p in t.params]

        def tup(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, tuple | list) and len(v) == len(fields)):
                raise _bad(f"expected {t.cql()}", v)
            return tuple(f(x) for f, x in zip(fields, v, strict=True))

        return tup
    if t.name == "udt":
        assert t.udt is not None
        names = t.udt.field_names
        convs = [_nullable(_to_ch(p), p) for p in t.udt.field_types]

        def udt(v: Any) -> Any:
            if v is None:
                return None
            if not (isinstance(v, dict)):
                raise _bad(f"expected dict for UDT {t.cql()}", v)
            unknown = set(v) - set(names)
            if unknown:
                raise ValueError(f"UDT {t.cql()} has no field(s) {sorted(unknown)}")
            return tuple(c(v.get(n)) for n, c in zip(names, convs, strict=True))

        return udt
    raise ValueError(f"CQL type {t.cql()} has no ClickHouse mapping")


# ------------------------------------------------------------------------------ whole columns
ColumnConverter = Callable[[list[Any]], list[Any]]


def to_ch_column(t: CqlType, nullable: bool = True) -> ColumnConverter:
    """Convert a whole column (the values of one column across a batch) at once: the same values
    as ``to_ch(t, nullable)`` applied to each, but a column whose values all have the exact Python
    type of the canonical form is checked with set/min/max (C speed) instead of one call per value.
    Raises ValueError for any bad value (callers then convert value by value to find which)."""
    one = to_ch(t, nullable)
    exact = _EXACT.get(t.name)
    if exact is None and t.name == "timestamp":
        exact = dt.datetime
    bits = _INT_BITS.get(t.name)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if bits else (0, 0)
    allowed = {exact, type(None)} if nullable else {exact}
    elem = t.params[0] if t.name in ("list", "set") else None
    elem_exact = _EXACT.get(elem.name) if elem is not None else None
    elem_bits = _INT_BITS.get(elem.name) if elem is not None else None

    def column(values: list[Any]) -> list[Any]:
        kinds = set(map(type, values))
        if exact is not None and kinds <= allowed:
            present = values if type(None) not in kinds else [v for v in values if v is not None]
            if bits is not None and present and (min(present) < lo or max(present) > hi):
                raise ValueError(f"{t.name} value outside ClickHouse Int{bits}")
            if exact is dt.datetime and {v.tzinfo for v in present} - {_UTC}:
                return [one(v) for v in values]  # other time zones: converted one by one
            return values
        if elem_exact is not None and kinds == {list}:
            items = [x for v in values for x in v]
            if set(map(type, items)) <= {elem_exact} and (
                elem_bits is None
                or not items
                or (-(1 << (elem_bits - 1)) <= min(items) and max(items) < (1 << (elem_bits - 1)))
            ):
                return [list(v) for v in values]
        return [one(v) for v in values]

    return column


# ------------------------------------------------------------------------------ read back -> ClickHouse
def identity(v: Any) -> Any:
    """The converter that changes nothing (``from_read`` returns it so callers can skip it)."""
    return v


def holds_blob(t: CqlType) -> bool:
    """A blob anywhere in the type: such columns are read back with Strings as bytes."""
    if t.name == "blob":
        return True
    params = t.udt.field_types if t.udt is not None else t.params
    return any(holds_blob(p) for p in params)


def as_list(v: Any) -> Any:
    """An Array read back as a list (None -> [])."""
    return [] if v is None else (v if type(v) is list else list(v))


def from_read(t: CqlType, strings_as_bytes: bool = True) -> Converter:
    """Normaliser: a value read back (Tuple as tuple; String as bytes when ``strings_as_bytes``,
    else as str) -> ClickHouse value space. Returns ``identity`` itself when nothing needs doing,
    so callers can skip the call."""
    if t.name in ("ascii", "text", "varchar", "decimal"):
        return (lambda v: v.decode() if isinstance(v, bytes) else v) if strings_as_bytes else identity
    if t.name == "timestamp":
        return lambda v: (
            v if v is None else (v.replace(tzinfo=_UTC) if v.tzinfo is None else v.astimezone(_UTC))
        )
    if t.name == "inet":

        def inet(v: Any) -> Any:
            if isinstance(v, ipaddress.IPv4Address):
                return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + v.packed)
            return v

        return inet
    if t.name == "duration":
        return lambda v: v if v is None else tuple(v.values() if isinstance(v, dict) else v)
    if t.name in _SCALAR:
        return identity
    if t.name in ("list", "set"):
        elem = from_read(t.params[0], strings_as_bytes)
        if elem is identity:
            return as_list
        return lambda v: [] if v is None else [elem(x) for x in v]
    if t.name == "map":
        kr, vr = (from_read(p, strings_as_bytes) for p in t.params)
        if is_map_array(t):
            return lambda v: [] if v is None else [(kr(k), vr(x)) for k, x in v]
        if kr is identity and vr is identity:
            return lambda v: {} if v is None else (v if type(v) is dict else dict(v))
        return lambda v: {} if v is None else {kr(k): vr(x) for k, x in v.items()}
    params = t.params if t.name == "tuple" else (t.udt.field_types if t.udt else ())
    readers = [from_read(p, strings_as_bytes) for p in params]

    def tup(v: Any) -> Any:
        if v is None:
            return None
        vals = v.values() if isinstance(v, dict) else v
        return tuple(r(x) for r, x in zip(readers, vals, strict=True))

    return tup


# ------------------------------------------------------------------------------------- CQL order
def _signed_bytes(b: bytes) -> tuple[int, ...]:
    return tuple(x - 256 if x > 127 else x for x in b)


def _uuid_key(u: uuid.UUID) -> Any:
    if u.version == 1:
        return (1, *timeuuid_sort_key(u))
    return (u.version or 0, 0, _signed_bytes(u.bytes))


def _inet_key(a: Any) -> Any:
    mapped = getattr(a, "ipv4_mapped", None)
    return (mapped or a).packed


def order_key(t: CqlType) -> Converter:
    """Sort key of a ClickHouse-space value in CQL order (nulls first inside tuples/UDTs)."""
    if t.name in ("uuid", "timeuuid"):
        return lambda v: (1, *timeuuid_sort_key(v)) if t.name == "timeuuid" else _uuid_key(v)
    if t.name == "decimal":
        return decimal.Decimal
    if t.name == "inet":
        return _inet_key
    if t.name in _SCALAR:
        return identity
    if t.name in ("list", "set"):
        ek = order_key(t.params[0])
        return lambda v: tuple(ek(x) for x in v)
    if t.name == "map":
        kk, vk = (order_key(p) for p in t.params)
        items: Callable[[Any], Any] = (lambda v: v) if is_map_array(t) else (lambda v: v.items())
        return lambda v: tuple((kk(k), vk(x)) for k, x in items(v))
    params = t.params if t.name == "tuple" else (t.udt.field_types if t.udt else ())
    keys = [order_key(p) for p in params]
    return lambda v: tuple((0,) if x is None else (1, k(x)) for k, x in zip(keys, v, strict=True))


def freeze(v: Any) -> Any:
    """A hashable identity for any ClickHouse-space value (set elements, map keys)."""
    if isinstance(v, list):
        return ("L", tuple(freeze(x) for x in v))
    if isinstance(v, dict):
        return ("M", tuple((freeze(k), freeze(x)) for k, x in v.items()))
    if isinstance(v, tuple):
        return ("T", tuple(freeze(x) for x in v))
    return v
