"""CQL types for the emulator: type text -> ``CType`` (with its ``cassandra.cqltypes`` class),
literal AST -> Python value, value normalisation and type-aware sort keys.

Python value forms (what storage holds and what the driver's cqltypes classes (de)serialize):
ints -> int, float/double -> float, decimal -> Decimal, text/ascii -> str, blob -> bytes,
boolean -> bool, uuid/timeuuid -> uuid.UUID, timestamp -> naive UTC datetime, date -> util.Date,
time -> util.Time, duration -> util.Duration, inet -> str, list -> list, set -> util.SortedSet,
map -> dict (keys in type order), tuple -> tuple, UDT -> the driver's UDT namedtuple.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from cassandra import cqltypes as CT
from cassandra import util as CU

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cql import ast as A

__all__ = [
    "NATIVE",
    "CType",
    "literal_value",
    "normalize",
    "parse_type_text",
    "sort_key_fn",
    "timeuuid_key",
]

NATIVE: dict[str, Any] = {
    "ascii": CT.AsciiType,
    "bigint": CT.LongType,
    "blob": CT.BytesType,
    "boolean": CT.BooleanType,
    "counter": CT.CounterColumnType,
    "date": CT.SimpleDateType,
    "decimal": CT.DecimalType,
    "double": CT.DoubleType,
    "duration": CT.DurationType,
    "float": CT.FloatType,
    "inet": CT.InetAddressType,
    "int": CT.Int32Type,
    "smallint": CT.ShortType,
    "text": CT.UTF8Type,
    "time": CT.TimeType,
    "timestamp": CT.DateType,
    "timeuuid": CT.TimeUUIDType,
    "tinyint": CT.ByteType,
    "uuid": CT.UUIDType,
    "varchar": CT.UTF8Type,
    "varint": CT.IntegerType,
}
_INT_RANGES = {"tinyint": 8, "smallint": 16, "int": 32, "bigint": 64, "counter": 64}
EPOCH = dt.datetime(1970, 1, 1)


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


@dataclass(eq=False)
class CType:
    """A resolved CQL type. ``name``: native name | list | set | map | tuple | vector | udt."""

    name: str
    params: tuple[CType, ...] = ()
    frozen: bool = False
    udt_name: str | None = None
    keyspace: str | None = None
    field_names: tuple[str, ...] = ()
    vector_size: int = 0
    _cass: Any = field(default=None, repr=False)

    @property
    def is_collection(self) -> bool:
        return self.name in ("list", "set", "map")

    @property
    def multicell(self) -> bool:
        """Non-frozen list/set/map/UDT: stored cell by cell."""
        return (self.is_collection or self.name == "udt") and not self.frozen

    @property
    def cass(self) -> Any:
        if self._cass is None:
            self._cass = self._build_cass()
        return self._cass

    def _build_cass(self) -> Any:
        n = self.name
        if n in NATIVE:
            return NATIVE[n]
        subs = [p.cass for p in self.params]
        if n == "list":
            c = CT.ListType.apply_parameters(subs)
        elif n == "set":
            c = CT.SetType.apply_parameters(subs)
        elif n == "map":
            c = CT.MapType.apply_parameters(subs)
        elif n == "tuple":
            return CT.TupleType.apply_parameters(subs)
        elif n == "udt":
            return CT.UserType.make_udt_class(
                self.keyspace, self.udt_name, tuple(self.field_names), tuple(subs)
            )
        elif n == "vector":
            return type(
                f"VectorType({subs[0].typename}, {self.vector_size})",
                (CT.VectorType,),
                {"vector_size": self.vector_size, "subtype": subs[0]},
            )
        else:  # pragma: no cover
            raise inv(f"Unknown type {n}")
        return c

    @property
    def text(self) -> str:
        """CQL text as system_schema.columns.type shows it."""
        n = self.name
        if n in NATIVE:
            return n
        if n == "udt":
            inner = _quote(self.udt_name or "")
            return f"frozen<{inner}>" if self.frozen else inner
        if n == "tuple":
            return f"frozen<tuple<{', '.join(p.text for p in self.params)}>>"
        if n == "vector":
            return f"vector<{self.params[0].text}, {self.vector_size}>"
        inner = f"{n}<{', '.join(p.text for p in self.params)}>"
        return f"frozen<{inner}>" if self.frozen else inner

    def frozen_copy(self) -> CType:
        return CType(
            self.name, self.params, True, self.udt_name, self.keyspace, self.field_names, self.vector_size
        )


def _frozen_if_multicell(t: CType) -> CType:
    return t.frozen_copy() if t.multicell else t


def _quote(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- type text parsing
_TYPE_TOKEN = re.compile(r'\s*(?:(?P<q>"(?:[^"]|"")+")|(?P<w>[A-Za-z0-9_$.]+)|(?P<s>[<>,]))')


def _type_tokens(text: str) -> list[str]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TYPE_TOKEN.match(text, pos)
        if not m:
            raise CqlError(ErrorCode.SYNTAX_ERROR, f"Bad type: {text!r}")
        if m.group("q"):
            out.append(m.group("q"))
        elif m.group("w"):
            out.append(m.group("w"))
        else:
            out.append(m.group("s"))
        pos = m.end()
    return out


UdtLookup = Callable[
    [str, str], tuple[list[str], list[str]] | None
]  # (ks, name) -> (field names, field types)


def parse_type_text(text: str, keyspace: str | None, udts: UdtLookup | None = None) -> CType:
    """Parse CQL type text (``frozen<map<int, text>>``, ``ut``) resolving UDTs in ``keyspace``."""
    toks = _type_tokens(text)
    pos = 0

    def parse(frozen: bool) -> CType:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        quoted = tok.startswith('"')
        name = tok[1:-1].replace('""', '"') if quoted else tok.lower()
        if "." in name and not quoted:
            name = name.split(".", 1)[1]
        if not quoted and name in ("frozen", "list", "set", "map", "tuple", "vector"):
            if toks[pos] != "<":
                raise CqlError(ErrorCode.SYNTAX_ERROR, f"Bad type: {text!r}")
            pos += 1
            params: list[CType] = []
            vsize = 0
            while True:
                if name == "vector" and toks[pos].isdigit():
                    vsize = int(toks[pos])
                    pos += 1
                else:
                    params.append(parse(name not in {"list", "set", "map"}))
                if toks[pos] == ",":
                    pos += 1
                    continue
                if toks[pos] != ">":
                    raise CqlError(ErrorCode.SYNTAX_ERROR, f"Bad type: {text!r}")
                pos += 1
                break
            if name == "frozen":
                if len(params) != 1:
                    raise inv("frozen<> takes exactly one type")
                return params[0].frozen_copy()
            want = {"list": 1, "set": 1, "map": 2}.get(name)
            if want is not None and len(params) != want:
                raise inv(f"{name} takes {want} type parameter(s)")
            if name in ("list", "set", "map"):
                for p in params:
                    if p.name == "counter":
                        raise inv("Counters are not allowed inside collections")
                    if p.multicell:
                        raise inv("Non-frozen collections are not allowed inside collections: " + text)
                return CType(name, tuple(params), frozen)
            if name == "tuple":
                return CType("tuple", tuple(p if not p.multicell else p.frozen_copy() for p in params), True)
            return CType("vector", tuple(params), True, vector_size=vsize)
        if not quoted and name in NATIVE:
            return CType(name)
        if udts is None or keyspace is None:
            raise inv(f"Unknown type {name}")
        found = udts(keyspace, name)
        if found is None:
            raise inv(f"Unknown type {keyspace}.{name}")
        fnames, ftypes = found
        ftypes_c = tuple(_frozen_if_multicell(parse_type_text(t, keyspace, udts)) for t in ftypes)
        return CType("udt", ftypes_c, frozen, name, keyspace, tuple(fnames))

    t = parse(False)
    if pos != len(toks):
        raise CqlError(ErrorCode.SYNTAX_ERROR, f"Bad type: {text!r}")
    return t


# ----------------------------------------------------------------------------- literal conversion
_TS_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
_DUR_RE = re.compile(r"(\d+)(y|mo|w|d|h|ms|us|µs|ns|m|s)", re.IGNORECASE)
_ISO_DUR_RE = re.compile(
    r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$", re.IGNORECASE
)


def parse_timestamp_text(s: str) -> dt.datetime:
    m = _TS_RE.match(s.strip())
    if not m:
        raise inv(f"Unable to parse a date/time from '{s}'")
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    ms_micro = (micro // 1000) * 1000  # timestamp precision is milliseconds
    t = dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0), ms_micro)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        off = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        t = t - sign * off
    return t


def ms_to_datetime(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def datetime_to_ms(v: dt.datetime) -> int:
    if v.tzinfo is not None:
        v = v.astimezone(dt.UTC).replace(tzinfo=None)
    return (v - EPOCH) // dt.timedelta(milliseconds=1)


def parse_duration(text: str) -> CU.Duration:
    neg = text.startswith("-")
    s = text[1:] if neg else text
    months = days = nanos = 0
    m = _ISO_DUR_RE.match(s)
    if s.upper().startswith("P") and m:
        y, mo, w, d, h, mi, sec = (int(x or 0) for x in m.groups())
        months = y * 12 + mo
        days = w * 7 + d
        nanos = ((h * 60 + mi) * 60 + sec) * 10**9
    else:
        pos = 0
        for mm in _DUR_RE.finditer(s):
            if mm.start() != pos:
                raise inv(f"Unable to convert '{text}' to a duration")
            pos = mm.end()
            n = int(mm.group(1))
            u = mm.group(2).lower()
            if u == "y":
                months += 12 * n
            elif u == "mo":
                months += n
            elif u == "w":
                days += 7 * n
            elif u == "d":
                days += n
            else:
                nanos += (
                    n
                    * {
                        "h": 3600 * 10**9,
                        "m": 60 * 10**9,
                        "s": 10**9,
                        "ms": 10**6,
                        "us": 1000,
                        "µs": 1000,
                        "ns": 1,
                    }[u]
                )
        if pos != len(s) or pos == 0:
            raise inv(f"Unable to convert '{text}' to a duration")
    if neg:
        months, days, nanos = -months, -days, -nanos
    return CU.Duration(months, days, nanos)


def _bad(lit: Any, t: CType) -> CqlError:
    shown = getattr(lit, "text", None)
    return inv(
        f'Invalid {_lit_kind(lit)} constant ({shown if shown is not None else lit}) for "{t.text}" '
        f"of type {t.text}"
    )


def _lit_kind(lit: Any) -> str:
    if isinstance(lit, A.Literal):
        return {
            "int": "INTEGER",
            "float": "FLOAT",
            "string": "STRING",
            "uuid": "UUID",
            "hex": "HEX",
            "bool": "BOOLEAN",
            "duration": "DURATION",
        }.get(lit.kind, lit.kind.upper())
    return type(lit).__name__


def literal_value(lit: Any, t: CType, resolve: Callable[[Any, CType], Any]) -> Any:
    """Convert a literal AST node to a value of type ``t``. ``resolve(term, type)`` evaluates nested
    non-literal terms (binds, function calls)."""
    if not isinstance(lit, A.Literal | A.ListLit | A.SetLit | A.MapLit | A.UdtLit | A.TupleLit):
        return resolve(lit, t)
    if isinstance(lit, A.Literal) and lit.kind == "null":
        return None
    n = t.name
    if isinstance(lit, A.Literal):
        k, s = lit.kind, lit.text
        if n in _INT_RANGES or n == "varint":
            if k != "int":
                raise _bad(lit, t)
            v = int(s)
            bits = _INT_RANGES.get(n)
            if bits and not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
                raise inv(f'Invalid {"INTEGER"} constant ({s}) for "{n}": out of range')
            return v
        if n in ("float", "double"):
            if k in ("int", "float"):
                return float(s)
            if k == "nan":
                return float("nan")
            if k == "infinity":
                return float("-inf") if s.startswith("-") else float("inf")
            raise _bad(lit, t)
        if n == "decimal":
            if k in ("int", "float"):
                try:
                    return Decimal(s)
                except InvalidOperation as e:
                    raise _bad(lit, t) from e
            raise _bad(lit, t)
        if n in ("text", "varchar", "ascii"):
            if k != "string":
                raise _bad(lit, t)
            if n == "ascii" and not s.isascii():
                raise inv(f"Invalid ASCII character in string literal {s!r}")
            return s
        if n == "blob":
            if k != "hex":
                raise _bad(lit, t)
            return bytes.fromhex(s[2:]) if len(s) % 2 == 0 else bytes.fromhex("0" + s[2:])
        if n == "boolean":
            if k != "bool":
                raise _bad(lit, t)
            return s == "true"
        if n in ("uuid", "timeuuid"):
            if k not in ("uuid", "string"):
                raise _bad(lit, t)
            try:
                u = uuid.UUID(s)
            except ValueError as e:
                raise _bad(lit, t) from e
            if n == "timeuuid" and u.version != 1:
                raise inv(f"Unsupported UUID type for timeuuid column: version {u.version}")
            return u
        if n == "timestamp":
            if k == "int":
                return ms_to_datetime(int(s))
            if k == "string":
                return parse_timestamp_text(s)
            raise _bad(lit, t)
        if n == "date":
            if k == "string":
                try:
                    return CU.Date(s)
                except ValueError as e:
                    raise inv(f"Unable to coerce '{s}' to a formatted date (long)") from e
            if k == "int":
                return CU.Date(int(s) - 2**31)
            raise _bad(lit, t)
        if n == "time":
            if k == "string":
                try:
                    return CU.Time(s)
                except ValueError as e:
                    raise inv(f"Unable to coerce '{s}' to a formatted time (long)") from e
            if k == "int":
                return CU.Time(int(s))
            raise _bad(lit, t)
        if n == "duration":
            if k in ("duration", "string"):
                return parse_duration(s)
            if k == "int" and s.lstrip("-") == "0":
                return CU.Duration(0, 0, 0)
            raise _bad(lit, t)
        if n == "inet":
            if k != "string":
                raise _bad(lit, t)
            try:
                return str(ipaddress.ip_address(s))
            except ValueError as e:
                raise inv(f"Unable to make inet address from '{s}'") from e
        raise _bad(lit, t)
    if n in {"list", "vector"}:
        if not isinstance(lit, A.ListLit):
            raise _bad(lit, t)
        vals = [literal_value(x, t.params[0], resolve) for x in lit.items]
        if any(v is None for v in vals):
            raise inv("null is not supported inside collections")
        if n == "vector" and len(vals) != t.vector_size:
            raise inv(f"Invalid vector literal: expected {t.vector_size} elements, got {len(vals)}")
        return vals
    if n == "set":
        items = (
            lit.items
            if isinstance(lit, A.SetLit)
            else ([] if isinstance(lit, A.MapLit) and not lit.pairs else None)
        )
        if items is None:
            raise _bad(lit, t)
        vals = [literal_value(x, t.params[0], resolve) for x in items]
        if any(v is None for v in vals):
            raise inv("null is not supported inside collections")
        return normalize(vals, t)
    if n == "map":
        if not isinstance(lit, A.MapLit):
            raise _bad(lit, t)
        pairs = [
            (literal_value(k, t.params[0], resolve), literal_value(v, t.params[1], resolve))
            for k, v in lit.pairs
        ]
        if any(k is None or v is None for k, v in pairs):
            raise inv("null is not supported inside collections")
        return normalize(dict(pairs), t)
    if n == "tuple":
        if not isinstance(lit, A.TupleLit):
            raise _bad(lit, t)
        if len(lit.items) > len(t.params):
            raise inv(
                f"Invalid tuple literal: too many elements. Type {t.text} expects {len(t.params)} but got "
                f"{len(lit.items)}"
            )
        vals = [literal_value(x, p, resolve) for x, p in zip(lit.items, t.params, strict=False)]
        return tuple(vals + [None] * (len(t.params) - len(vals)))
    if n == "udt":
        if not isinstance(lit, A.UdtLit):
            raise _bad(lit, t)
        values: dict[str, Any] = {}
        for fname, fterm in lit.fields:
            if fname not in t.field_names:
                raise inv(f"Unknown field '{fname}' in value of user defined type {t.udt_name}")
            values[fname] = literal_value(fterm, t.params[t.field_names.index(fname)], resolve)
        return make_udt(t, [values.get(f) for f in t.field_names])
    raise _bad(lit, t)


def make_udt(t: CType, values: list[Any]) -> Any:
    cls = t.cass.tuple_type
    return cls(*values) if cls is not None else tuple(values)


def normalize(v: Any, t: CType) -> Any:
    """Bring a deserialized/bound value to the canonical storage form of type ``t``."""
    if v is None:
        return None
    n = t.name
    if n == "timestamp":
        if isinstance(v, dt.datetime):
            if v.tzinfo is not None:
                v = v.astimezone(dt.UTC).replace(tzinfo=None)
            return v
        if isinstance(v, int):
            return ms_to_datetime(v)
        return v
    if n == "date" and not isinstance(v, CU.Date):
        return CU.Date(v)
    if n == "time" and not isinstance(v, CU.Time):
        return CU.Time(v)
    if n in {"list", "vector"}:
        return [normalize(x, t.params[0]) for x in v]
    if n == "set":
        k = sort_key_fn(t.params[0])
        return CU.SortedSet(sorted((normalize(x, t.params[0]) for x in v), key=k))
    if n == "map":
        kt, vt = t.params
        key = sort_key_fn(kt)
        items = [(_hashable(normalize(a, kt)), normalize(b, vt)) for a, b in v.items()]
        items.sort(key=lambda p: key(p[0]))
        return dict(items)
    if n == "tuple":
        vals = list(v) + [None] * (len(t.params) - len(v))
        return tuple(normalize(x, p) for x, p in zip(vals, t.params, strict=False))
    if n == "udt":
        if isinstance(v, dict):
            vals = [v.get(f) for f in t.field_names]
        elif isinstance(v, tuple):
            vals = list(v) + [None] * (len(t.params) - len(v))
        else:
            vals = [getattr(v, f, None) for f in t.field_names]
        return make_udt(t, [normalize(x, p) for x, p in zip(vals, t.params, strict=False)])
    if n == "inet" and not isinstance(v, str):
        return str(v)
    return v


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((a, _hashable(b)) for a, b in v.items())
    if isinstance(v, CU.SortedSet):
        return frozenset(v)
    return v


# ----------------------------------------------------------------------------- ordering
def timeuuid_key(u: uuid.UUID) -> tuple[int, int]:
    """Scylla's timeuuid order: timestamp, then the low 8 bytes as signed bytes (§1.3)."""
    i = u.int
    return (u.time, (i & 0xFFFFFFFFFFFFFFFF) ^ 0x8080808080808080)


def _uuid_key(u: uuid.UUID) -> tuple[int, int, int]:
    i = u.int
    ver = (i >> 76) & 0xF
    if ver == 1:
        return (1, u.time, (i & 0xFFFFFFFFFFFFFFFF) ^ 0x8080808080808080)
    return (ver, i >> 64, (i & 0xFFFFFFFFFFFFFFFF) ^ 0x8080808080808080)


def _ident(v: Any) -> Any:
    return v


def sort_key_fn(t: CType) -> Callable[[Any], Any]:
    """A function mapping a non-null value of ``t`` to a key whose natural order is the CQL order."""
    n = t.name
    if n == "timeuuid":
        return timeuuid_key
    if n == "uuid":
        return _uuid_key
    if n == "date":
        return lambda v: v.days_from_epoch
    if n == "time":
        return lambda v: v.nanosecond_time
    if n == "inet":
        return lambda v: ipaddress.ip_address(v).packed
    if n == "duration":
        return lambda v: (v.months, v.days, v.nanoseconds)
    if n in ("list", "set", "vector"):
        ek = sort_key_fn(t.params[0])
        return lambda v: tuple(ek(x) for x in v)
    if n == "map":
        kk, vk = sort_key_fn(t.params[0]), sort_key_fn(t.params[1])
        return lambda v: tuple((kk(a), vk(b)) for a, b in v.items())
    if n in ("tuple", "udt"):
        fks = [sort_key_fn(p) for p in t.params]

        def tk(v: Any) -> Any:
            return tuple((0,) if x is None else (1, f(x)) for f, x in zip(fks, v, strict=False))

        return tk
    return _ident
