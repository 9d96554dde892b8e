"""The canonical text of a value: what ``hash``, ``tokenize`` and ``keep_last`` work on.

It is documented per CQL type so that anyone holding the hash key can compute the same
``hash_...`` value elsewhere (a join key in another system, a lookup by e-mail address):

=====================  ====================================================================
CQL type               canonical text
=====================  ====================================================================
ascii, text, varchar   the text as is (no trimming, no case folding, no Unicode normalisation)
inet                   as the driver returns it: ``10.0.0.1``, ``::1``
tinyint .. varint      decimal, ``-`` for negatives, no leading zeros: ``-42``
time                   nanoseconds since midnight in decimal (cdcd's lossless form of ``time``)
boolean                ``true`` / ``false``
float, double          the shortest decimal that reads back as the same double (``0.1``,
                       ``1e+100``); ``NaN``, ``Infinity``, ``-Infinity``
decimal                plain notation with the value's scale: ``1.10``, ``1000``, ``0.00012``
uuid, timeuuid         lowercase with hyphens: ``123e4567-e89b-12d3-a456-426614174000``
timestamp              RFC 3339 in UTC with milliseconds: ``2026-01-31T12:00:00.000Z``
date                   ``YYYY-MM-DD``
duration               ``<months>mo<days>d<nanoseconds>ns``: ``1mo2d3000ns``
blob                   lowercase hex, no prefix: ``00ff10``
=====================  ====================================================================

Collections, tuples and UDTs are masked element by element (map values, list and set elements,
tuple and UDT fields), so only the scalars above ever get a canonical text. The text is UTF-8
encoded before hashing: ``hash_`` + hex(HMAC-SHA-256(hash_key, utf8(canonical text))).
"""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from typing import Any

from cdcd.events import CqlDuration

__all__ = ["canonical_text"]


def canonical_text(value: Any) -> str:
    """The canonical text of one scalar value in cdcd's value forms (``cdcd.events``).
    Raises TypeError for anything else (a collection must be masked element by element)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):  # before date: a datetime is a date
        return _rfc3339_ms(value)
    if isinstance(value, datetime.date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return _plain_decimal(value)
    if isinstance(value, CqlDuration):
        return f"{value.months}mo{value.days}d{value.nanoseconds}ns"
    raise TypeError(f"no canonical text for a {type(value).__name__}")


def _rfc3339_ms(value: datetime.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC)
    ms = value.microsecond // 1000
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{ms:03d}Z"
    )


def _plain_decimal(value: decimal.Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")
