"""Driver values -> the canonical value forms of ``cdcd.events`` (see its module docstring).

Pure functions. ``canonical(t)`` returns a converter for a *whole* value of CQL type ``t`` (a frozen
value, a key column, or a full collection as it appears in a pre/postimage). ``delta_value(t)`` and
``deleted_elements(t)`` convert the element-level columns that CDC logs for non-frozen collections
and UDTs (scylla-cdc.md §1.2, §2.3).

Every converter accepts ``None`` and returns ``None`` for it. A value that cannot be represented
(e.g. a ``date`` outside years 1..9999) raises ``ValueError`` naming the problem; the decoder turns
that into an ``UndecodableGroup``.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cdcd.events import CqlDuration, timeuuid_sort_key
from cdcd.schema import CqlType

__all__ = ["Converter", "canonical", "deleted_elements", "delta_value", "hashable", "is_identity"]

Converter = Callable[[Any], Any]

_UTC = datetime.UTC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_DATE = datetime.date(1970, 1, 1)


def _identity(v: Any) -> Any:
    return v


def is_identity(c: Converter) -> bool:
    """``c`` returns every value as it is (the driver's value is already canonical): callers on a
    hot path may skip calling it."""
    return c is _identity


def _timestamp(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, datetime.datetime):
        # The driver returns naive UTC datetimes (millisecond precision).
        return v.replace(tzinfo=_UTC) if v.tzinfo is None else v.astimezone(_UTC)
    if isinstance(v, int):  # milliseconds since the epoch
        return _EPOCH + datetime.timedelta(milliseconds=v)
    raise ValueError(f"timestamp value of unexpected type {type(v).__name__}: {v!r}")


def _date(v: Any) -> Any:
    if v is None or isinstance(v, datetime.date):
        return v
    days = getattr(v, "days_from_epoch", v)  # cassandra.util.Date or int days
    if not isinstance(days, int):
        raise ValueError(f"date value of unexpected type {type(v).__name__}: {v!r}")
    try:
        return _EPOCH_DATE + datetime.timedelta(days=days)
    except OverflowError:
        raise ValueError(f"date {days} days from 1970-01-01 is outside years 1..9999") from None


def _time(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, datetime.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000_000 + v.microsecond * 1000
    ns = getattr(v, "nanosecond_time", None)  # cassandra.util.Time
    if not isinstance(ns, int):
        raise ValueError(f"time value of unexpected type {type(v).__name__}: {v!r}")
    return ns


def _duration(v: Any) -> Any:
    if v is None or isinstance(v, CqlDuration):
        return v
    try:
        return CqlDuration(int(v.months), int(v.days), int(v.nanoseconds))
    except AttributeError:
        raise ValueError(f"duration value of unexpected type {type(v).__name__}: {v!r}") from None


def _inet(v: Any) -> Any:
    return None if v is None else str(v)


def _blob(v: Any) -> Any:
    return None if v is None else bytes(v)


_ATOMIC: dict[str, Converter] = {
    "timestamp": _timestamp,
    "date": _date,
    "time": _time,
    "duration": _duration,
    "inet": _inet,
    "blob": _blob,
}


def hashable(v: Any) -> Any:
    """Make a canonical value usable as a dict key (lists/sets -> tuples, dicts -> item tuples)."""
    if isinstance(v, list | tuple):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((hashable(k), hashable(x)) for k, x in v.items())
    return v


def _items(v: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(v, Mapping) or hasattr(v, "items"):
        items: Iterable[tuple[Any, Any]] = v.items()
    else:
        items = iter(v)  # a sequence of pairs
    return items  # a sequence of pairs


def _sorted_timeuuid_items(v: Any) -> list[tuple[Any, Any]]:
    return sorted(_items(v), key=lambda kv: timeuuid_sort_key(kv[0]))


def canonical(t: CqlType) -> Converter:
    """Converter for a whole value of type ``t`` (frozen semantics; multicell columns in images)."""
    if t.name == "list":
        elem = canonical(t.params[0])

        def conv_list(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, Mapping) or hasattr(v, "items"):
                # A non-frozen list in an image is logged as map<timeuuid, V>: keep the key order.
                return [elem(x) for _, x in _sorted_timeuuid_items(v)]
            return [elem(x) for x in v]

        return conv_list
    if t.name == "set":
        elem = canonical(t.params[0])
        if t.params[0].name == "timeuuid":
            return lambda v: None if v is None else sorted((elem(x) for x in v), key=timeuuid_sort_key)
        return lambda v: None if v is None else [elem(x) for x in v]
    if t.name == "map":
        kconv = canonical(t.params[0])
        vconv = canonical(t.params[1])
        return lambda v: None if v is None else {hashable(kconv(k)): vconv(x) for k, x in _items(v)}
    if t.name == "tuple":
        convs = [canonical(p) for p in t.params]

        def conv_tuple(v: Any) -> Any:
            if v is None:
                return None
            vals = list(v)
            if len(vals) > len(convs):
                raise ValueError(f"tuple value {v!r} has more elements than {t.cql()}")
            vals += [None] * (len(convs) - len(vals))
            return tuple(c(x) for c, x in zip(convs, vals, strict=True))

        return conv_tuple
    if t.name == "udt":
        assert t.udt is not None
        udt = t.udt
        names = udt.field_names
        fconvs = [canonical(ft) for ft in t.udt.field_types]

        def conv_udt(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, Mapping):
                return {n: c(v.get(n)) for n, c in zip(names, fconvs, strict=True)}
            vals = list(v)
            vals += [None] * (len(names) - len(vals))
            if len(vals) > len(names):
                raise ValueError(f"UDT value {v!r} has more fields than {udt.name} {names}")
            return {n: c(x) for n, c, x in zip(names, fconvs, vals, strict=True)}

        return conv_udt
    return _ATOMIC.get(t.name, _identity)


def delta_value(t: CqlType) -> Converter:
    """Converter for the value column of a *delta* row.

    For multicell columns it keeps only the cells the write added: map -> dict, set -> list,
    list -> ``dict[uuid.UUID, value]`` in timeuuid order, UDT -> ``dict`` of the non-null fields
    (null fields of a logged UDT mean "not written"). Frozen/atomic columns use ``canonical``.
    An empty result is returned as ``None`` (nothing added).
    """
    if not t.is_multicell:
        return canonical(t)
    if t.name == "list":
        elem = canonical(t.params[0])

        def conv_list(v: Any) -> Any:
            if v is None:
                return None
            out: dict[uuid.UUID, Any] = {k: elem(x) for k, x in _sorted_timeuuid_items(v)}
            return out or None

        return conv_list
    if t.name == "udt":
        whole = canonical(t)

        def conv_udt(v: Any) -> Any:
            d = whole(v)
            if d is None:
                return None
            return {k: x for k, x in d.items() if x is not None} or None

        return conv_udt
    whole = canonical(_frozen(t))
    return lambda v: None if v is None else (whole(v) or None)


def _frozen(t: CqlType) -> CqlType:
    """The frozen variant of ``t`` (used to convert a multicell column's logged frozen value)."""
    return CqlType(t.name, t.params, True, t.udt)


def deleted_elements(t: CqlType) -> Converter:
    """Converter for ``cdc$deleted_elements_<col>`` of multicell column type ``t``: map keys, set
    elements, list cell timeuuids (timeuuid order) or UDT field *names* (from field indices)."""
    if t.name in {"map", "set"}:
        kconv = canonical(t.params[0])
        if t.params[0].name == "timeuuid":
            return lambda v: None if v is None else sorted((kconv(x) for x in v), key=timeuuid_sort_key)
        return lambda v: None if v is None else [kconv(x) for x in v]
    if t.name == "list":
        return lambda v: None if v is None else sorted(v, key=timeuuid_sort_key)
    if t.name == "udt":
        assert t.udt is not None
        udt = t.udt
        names = udt.field_names

        def conv_fields(v: Any) -> Any:
            if v is None:
                return None
            out = []
            for i in sorted(int(x) for x in v):
                if not 0 <= i < len(names):
                    raise ValueError(f"deleted field index {i} outside UDT {udt.name} fields {names}")
                out.append(names[i])
            return out

        return conv_fields
    raise ValueError(f"column type {t.cql()} has no deleted elements")
