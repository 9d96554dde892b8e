"""Pure helpers of the reader: timeuuid bounds, window planning and row -> group assembly.

Windows are half-open in time: ``[begin, end)`` is queried as
``"cdc$time" > lower AND "cdc$time" <= min_timeuuid(end)`` where ``lower`` is the smallest
per-stream position (exclusive) and ``min_timeuuid(t)`` sorts before every real ``cdc$time`` of
microsecond ``t`` (Scylla compares the low bytes as signed bytes, scylla-cdc.md §1.3). A row at
exactly ``end`` is therefore left for the next window, whose lower bound is ``min_timeuuid(end)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cdcd.events import timeuuid_to_micros

__all__ = ["GroupAssembler", "RawGroup", "max_pos", "min_timeuuid", "plan_window"]

_UUID_EPOCH_OFFSET = 0x01B21DD213814000
_LOW64 = 0xFFFFFFFFFFFFFFFF
_SIGNED_BYTES = 0x8080808080808080


def min_timeuuid(micros: int) -> uuid.UUID:
    """The smallest timeuuid (in CQL order) whose timestamp is ``micros`` µs since the epoch.

    Integer arithmetic (the driver's ``min_uuid_from_time`` goes through a float)."""
    ticks = micros * 10 + _UUID_EPOCH_OFFSET
    return uuid.UUID(
        fields=(
            ticks & 0xFFFFFFFF,
            (ticks >> 32) & 0xFFFF,
            ((ticks >> 48) & 0x0FFF) | 0x1000,
            0x80,
            0x80,
            0x808080808080,
        )
    )


def max_pos(a: uuid.UUID, b: uuid.UUID) -> uuid.UUID:
    """The later of two timeuuids in CQL order (``timeuuid_sort_key`` inlined: once per group)."""
    if a is b:
        return a
    ia, ib = a.int, b.int
    ta = ((ia >> 64) & 0x0FFF) << 48 | ((ia >> 80) & 0xFFFF) << 32 | ia >> 96
    tb = ((ib >> 64) & 0x0FFF) << 48 | ((ib >> 80) & 0xFFFF) << 32 | ib >> 96
    if ta != tb:
        return a if ta > tb else b
    return a if (ia & _LOW64) ^ _SIGNED_BYTES >= (ib & _LOW64) ^ _SIGNED_BYTES else b


def plan_window(
    *, lower: uuid.UUID, now_us: int, confidence_us: int, size_us: int, end_us: int | None
) -> int | None:
    """End (µs) of the next window starting after ``lower``, or None when no data can be read
    yet: ``min(begin + size, now - confidence, generation end)``, and only if that is after begin.
    """
    begin = timeuuid_to_micros(lower)
    stop = min(begin + size_us, now_us - confidence_us)
    if end_us is not None:
        stop = min(stop, end_us)
    if stop <= begin:
        return None
    return stop


RawGroup = tuple[bytes, uuid.UUID, list[dict[str, Any]]]


class GroupAssembler:
    """Collects log rows (in query order: per stream by ``cdc$time``, ``cdc$batch_seq_no``) into
    complete groups closed by ``cdc$end_of_batch = true``. A group may span pages.

    ``feed(rows)`` returns the groups completed so far plus *broken* groups (rows of a
    (stream, time) that ended without an end-of-batch row, followed by another group). Rows of a
    group still open at the end of a window stay in ``pending``; see ``take_pending``.
    """

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    def feed(self, rows: Iterable[Mapping[str, Any]]) -> tuple[list[RawGroup], list[RawGroup]]:
        done: list[RawGroup] = []
        broken: list[RawGroup] = []
        for row in rows:
            # dict_factory rows are fresh dicts nobody else holds: kept as they are, not copied.
            r = row if type(row) is dict else dict(row)
            if self.pending:
                head = self.pending[0]
                if head["cdc$stream_id"] != r["cdc$stream_id"] or head["cdc$time"] != r["cdc$time"]:
                    broken.append((head["cdc$stream_id"], head["cdc$time"], self.pending))
                    self.pending = []
            self.pending.append(r)
            if r.get("cdc$end_of_batch") is True:
                done.append((r["cdc$stream_id"], r["cdc$time"], self.pending))
                self.pending = []
        return done, broken

    def take_pending(self) -> RawGroup | None:
        """The incomplete group left at the end of a window (and forget it)."""
        if not self.pending:
            return None
        head = self.pending[0]
        group = (head["cdc$stream_id"], head["cdc$time"], self.pending)
        self.pending = []
        return group
