"""The data that flows through cdcd: positions in CDC streams and decoded change events.

Canonical value forms (decode.py produces them, every sink consumes them; all are msgspec-encodable):

================  =====================================================================
CQL type          Python value in ``ChangeEvent.values`` / ``key``
================  =====================================================================
ascii/text        ``str``
tinyint..bigint   ``int``; varint ``int``; counter: not supported by Scylla CDC
float/double      ``float``
decimal           ``decimal.Decimal``
boolean           ``bool``
uuid/timeuuid     ``uuid.UUID``
timestamp         ``datetime.datetime`` aware, UTC, millisecond precision
date              ``datetime.date`` (dates outside year 1..9999 are rejected by the validator)
time              ``int`` nanoseconds since midnight (lossless)
duration          ``CqlDuration(months, days, nanoseconds)``
inet              ``str`` (as the driver returns it: '10.0.0.1', '::1')
blob              ``bytes``
list<T>           ``list``            (frozen lists, and full images)
set<T>            ``list`` in CQL order (elements may be unhashable frozen collections)
map<K,V>          ``dict``; keys made hashable (lists -> tuples) when needed
tuple<...>        ``tuple``
UDT               ``dict[str, Any]`` field name -> value (all fields present, null = None)
================  =====================================================================

The structs are not tracked by the cyclic garbage collector (``gc=False``): they hold plain
values and never take part in a reference cycle, and a catch-up keeps tens of thousands of them
in flight, which full collections would otherwise scan again and again.

Non-frozen collections in *delta* rows carry only the cells the write added:
``values[col]`` is a ``dict`` for maps, a ``list`` for sets, a ``dict[uuid.UUID, value]`` for lists
(the list order is the timeuuid order of the keys: compare with ``timeuuid_sort_key``), and a
``dict[str, value]`` of the written fields for UDTs. ``deleted_elements[col]`` holds removed map
keys / set elements / list timeuuids / UDT field names. A column in ``deleted`` whose values entry
is present is an overwrite (clear, then add).
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

import msgspec

__all__ = [
    "ChangeEvent",
    "CqlDuration",
    "EventBatch",
    "Op",
    "Position",
    "RangeBound",
    "timeuuid_sort_key",
    "timeuuid_to_micros",
]

_UUID_EPOCH_OFFSET = 0x01B21DD213814000  # 100-ns intervals between 1582-10-15 and 1970-01-01


# Both helpers read ``UUID.int`` once and shift (``UUID.time`` goes through four properties and
# ``UUID.bytes`` builds a bytes object): they run several times per CDC log group.
_LOW64 = 0xFFFFFFFFFFFFFFFF
_SIGNED_BYTES = 0x8080808080808080  # flips each byte's sign bit: unsigned order = signed-byte order


def timeuuid_to_micros(u: uuid.UUID) -> int:
    """The write timestamp (µs since the Unix epoch) carried by a ``cdc$time`` timeuuid."""
    i = u.int
    ticks = ((i >> 64) & 0x0FFF) << 48 | ((i >> 80) & 0xFFFF) << 32 | i >> 96  # == u.time
    return (ticks - _UUID_EPOCH_OFFSET) // 10


def timeuuid_sort_key(u: uuid.UUID) -> tuple[int, int]:
    """Scylla's timeuuid order: timestamp, then the low 8 bytes compared as *signed* bytes.

    ``uuid.UUID.__lt__`` compares raw bytes and is wrong for CQL timeuuids.
    """
    i = u.int
    return (((i >> 64) & 0x0FFF) << 48 | ((i >> 80) & 0xFFFF) << 32 | i >> 96, (i & _LOW64) ^ _SIGNED_BYTES)


class Op(enum.IntEnum):
    """``cdc$operation`` values; keep in line with shared/docs/scylla-cdc.md §2.1."""

    SERVICE_PARTITION_DELETE = -4
    SERVICE_ROW_DELETE = -3
    PREIMAGE = 0
    UPDATE = 1
    INSERT = 2
    ROW_DELETE = 3
    PARTITION_DELETE = 4
    RANGE_DELETE_START_INCL = 5
    RANGE_DELETE_START_EXCL = 6
    RANGE_DELETE_END_INCL = 7
    RANGE_DELETE_END_EXCL = 8
    POSTIMAGE = 9
    # Not a cdc$operation: one decoded event standing for a start/end bound pair (ops 5-8).
    RANGE_DELETE = 100


class CqlDuration(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """CQL ``duration``: months, days and nanoseconds are independent (no normalisation)."""

    months: int
    days: int
    nanoseconds: int


class Position(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Place of a CDC log group within one stream. Order with ``sort_key()`` (CQL timeuuid order)."""

    generation: int  # generation (stream set) start, ms since the Unix epoch
    stream_id: bytes  # cdc$stream_id, 16 bytes
    time: uuid.UUID  # cdc$time of the group

    def sort_key(self) -> tuple[int, int]:
        return timeuuid_sort_key(self.time)


class RangeBound(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A clustering range of a range delete. A bound holds a clustering-key *prefix* (possibly
    empty = unbounded on that side), in clustering-column order."""

    start: tuple[Any, ...]
    start_inclusive: bool
    end: tuple[Any, ...]
    end_inclusive: bool


class ChangeEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One decoded delta of a CDC log group. Immutable: stages return copies via
    ``msgspec.structs.replace``.

    ``key`` always holds every partition-key column; it also holds every clustering column for
    clustered-row changes, none for static-row changes and partition deletes. ``static`` is true
    for changes to static columns. Range deletes have ``op = Op.RANGE_DELETE`` and ``range`` set.
    """

    table: str  # "keyspace.table" of the source table
    pos: Position
    batch_seq: int  # cdc$batch_seq_no of the (first) log row of this event
    op: Op
    write_time_us: int  # from cdc$time; drives version columns and staleness
    key: dict[str, Any]
    static: bool = False
    values: dict[str, Any] = {}
    deleted: frozenset[str] = frozenset()
    deleted_elements: dict[str, list[Any]] = {}
    ttl: int | None = None
    range: RangeBound | None = None
    preimage: dict[str, Any] | None = None  # matched by primary key, when the table has images
    postimage: dict[str, Any] | None = None


class EventBatch(msgspec.Struct, kw_only=True):
    """Events of one read, in per-stream order, and the positions they make committable."""

    events: list[ChangeEvent]
    upto: dict[bytes, Position]  # stream_id -> last group position covered (even if it had no events)
    decode_ns: int = 0  # time spent decoding these events (for the trace's decode span)
    trace: Any = None  # the read span's SpanContext when tracing is on (cdcd.ops.tracing)
