"""Lossless msgpack encoding of ``ChangeEvent`` values for the dead-letter store.

Plain msgspec msgpack turns ``Decimal``, ``UUID``, ``date``, ``tuple`` and ``CqlDuration`` into
strings or lists when decoded as ``Any``, and cannot carry integers past 64 bits (varint). The
dead-letter store must hand back the *original* event, so every value that would not round-trip
is wrapped in a msgpack extension type before encoding and unwrapped by ``ext_hook``:

====  ==============================================  =====================================
code  Python value                                    payload
====  ==============================================  =====================================
1     ``decimal.Decimal``                             ``str(d)``
2     ``uuid.UUID``                                   16 raw bytes
3     ``datetime.date`` (not datetime)                ISO text
4     ``datetime.datetime``                           ISO text (keeps tz and microseconds)
5     ``datetime.time``                               ISO text
6     ``tuple``                                       msgpack array of encoded elements
7     ``CqlDuration``                                 msgpack [months, days, nanoseconds]
8     ``int`` outside the 64-bit range                decimal text
9     ``set`` / ``frozenset``                         msgpack array -> ``frozenset``
10    ``dict`` with any non-``str`` key               msgpack array [k1, v1, k2, v2, ...]
====  ==============================================  =====================================

``str``/``bytes``/``bool``/``float``/``None``/64-bit ``int``, lists and str-keyed dicts stay
native, so entries remain readable by any msgpack tool. Any other type raises TypeError naming it.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any, TypeVar

import msgspec

from cdcd.events import ChangeEvent, CqlDuration, RangeBound

__all__ = ["decode_value", "encode_value", "tag_event", "tag_value", "untag_ext"]

T = TypeVar("T")
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1
_ENC = msgspec.msgpack.Encoder()
Ext = msgspec.msgpack.Ext


def tag_value(v: Any) -> Any:
    """``v`` with every non-round-tripping value wrapped in an ``Ext`` (see the table)."""
    if v is None or isinstance(v, str | bytes | bool | float):
        return v
    if isinstance(v, int):
        return v if _I64_MIN <= v <= _U64_MAX else Ext(8, str(v).encode())
    if isinstance(v, list):
        return [tag_value(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: tag_value(x) for k, x in v.items()}
        flat: list[Any] = []
        for k, x in v.items():
            flat += [tag_value(k), tag_value(x)]
        return Ext(10, _ENC.encode(flat))
    if isinstance(v, decimal.Decimal):
        return Ext(1, str(v).encode())
    if isinstance(v, uuid.UUID):
        return Ext(2, v.bytes)
    if isinstance(v, datetime.datetime):
        return Ext(4, v.isoformat().encode())
    if isinstance(v, datetime.date):
        return Ext(3, v.isoformat().encode())
    if isinstance(v, datetime.time):
        return Ext(5, v.isoformat().encode())
    if isinstance(v, CqlDuration):
        return Ext(7, _ENC.encode([v.months, v.days, v.nanoseconds]))
    if isinstance(v, tuple):
        return Ext(6, _ENC.encode([tag_value(x) for x in v]))
    if isinstance(v, set | frozenset):
        return Ext(9, _ENC.encode([tag_value(x) for x in v]))
    raise TypeError(f"cannot store a value of type {type(v).__name__} in the dead-letter store")


_DEC_ANY: msgspec.msgpack.Decoder[Any]


def untag_ext(code: int, data: memoryview) -> Any:
    """msgspec ``ext_hook``: the inverse of ``tag_value``."""
    raw = bytes(data)
    if code == 1:
        return decimal.Decimal(raw.decode())
    if code == 2:
        return uuid.UUID(bytes=raw)
    if code == 3:
        return datetime.date.fromisoformat(raw.decode())
    if code == 4:
        return datetime.datetime.fromisoformat(raw.decode())
    if code == 5:
        return datetime.time.fromisoformat(raw.decode())
    if code == 6:
        return tuple(_DEC_ANY.decode(raw))
    if code == 7:
        months, days, nanos = _DEC_ANY.decode(raw)
        return CqlDuration(months, days, nanos)
    if code == 8:
        return int(raw.decode())
    if code == 9:
        return frozenset(_DEC_ANY.decode(raw))
    if code == 10:
        flat = _DEC_ANY.decode(raw)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    raise ValueError(f"unknown msgpack extension code {code} in a dead-letter entry")


_DEC_ANY = msgspec.msgpack.Decoder(ext_hook=untag_ext)


def _tag_dict(d: dict[str, Any] | None) -> Any:
    return None if d is None else {k: tag_value(x) for k, x in d.items()}


def tag_event(ev: ChangeEvent) -> ChangeEvent:
    """A copy of ``ev`` whose Any-typed values are tagged, ready for msgspec msgpack encoding."""
    rng = ev.range
    if rng is not None:
        rng = RangeBound(
            start=tuple(tag_value(x) for x in rng.start),
            start_inclusive=rng.start_inclusive,
            end=tuple(tag_value(x) for x in rng.end),
            end_inclusive=rng.end_inclusive,
        )
    return msgspec.structs.replace(
        ev,
        key=_tag_dict(ev.key),
        values=_tag_dict(ev.values),
        deleted_elements={k: [tag_value(x) for x in v] for k, v in ev.deleted_elements.items()},
        range=rng,
        preimage=_tag_dict(ev.preimage),
        postimage=_tag_dict(ev.postimage),
    )


def encode_value(obj: Any) -> bytes:
    """msgpack of a Struct whose ChangeEvents were passed through ``tag_event``."""
    return _ENC.encode(obj)


def decode_value(blob: bytes, typ: type[T]) -> T:
    """Decode ``blob`` as ``typ``, unwrapping the extension types."""
    return msgspec.msgpack.decode(blob, type=typ, ext_hook=untag_ext)
