"""Contiguous watermarks per CDC stream, with capped in-flight work (Jeffail/checkpoint ``Capped``).

The reader ``await``s ``track(upto, weight)`` for every batch it hands on, in per-stream order;
it gets a ``Ticket``. Whoever finishes the batch (written, rejected to the validation queue,
filtered, skipped as stale: all count as done) calls ``ticket.resolve()``, in any order.
``committed()`` then gives, per stream, the highest position whose ticket *and every earlier
ticket of that stream* are resolved: an unresolved position is never passed, so a checkpoint
saved from it never skips work.

``track`` blocks while the unresolved weight would exceed ``max_in_flight`` (backpressure, not
buffering), except when nothing is in flight, so one oversized batch cannot deadlock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

from cdcd.events import Position

__all__ = ["Ticket", "WatermarkTracker"]


class _Entry:
    __slots__ = ("position", "resolved")

    def __init__(self, position: Position) -> None:
        self.position = position
        self.resolved = False


class Ticket:
    """Handle for one tracked batch. ``resolve()`` is idempotent."""

    __slots__ = ("_entries", "_tracker", "resolved", "weight")

    def __init__(self, tracker: WatermarkTracker, entries: list[tuple[bytes, _Entry]], weight: int) -> None:
        self._tracker = tracker
        self._entries = entries
        self.weight = weight
        self.resolved = False

    def resolve(self) -> None:
        """Mark the batch done; advances the watermarks it was holding back."""
        if self.resolved:
            return
        self.resolved = True
        self._tracker._resolve(self)


class WatermarkTracker:
    """Per-stream contiguous watermarks over tracked positions. One event loop; not thread-safe.

    ``start`` is the resume point (loaded checkpoint); ``committed()`` includes it until a later
    position is resolved. Positions are compared with ``Position.sort_key()`` (CQL timeuuid
    order); tracking a position older than the last tracked one of its stream raises ValueError.
    """

    def __init__(self, *, max_in_flight: int = 10_000, start: Mapping[bytes, Position] | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._pending: dict[bytes, deque[_Entry]] = {}
        self._committed: dict[bytes, Position] = dict(start or {})
        self._last: dict[bytes, Position] = dict(start or {})
        self._in_flight = 0
        self._unresolved_tickets = 0
        self._room = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Unresolved weight (events) currently tracked."""
        return self._in_flight

    @property
    def unresolved(self) -> int:
        """Number of tracked tickets not yet resolved."""
        return self._unresolved_tickets

    async def track(self, upto: Mapping[bytes, Position], weight: int = 1) -> Ticket:
        """Register a batch covering ``upto`` (stream -> last position); blocks past the cap.

        Raises ValueError if a position goes backwards in its stream.
        """
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        while not self.has_room(weight):
            self._room.clear()
            await self._room.wait()
        return self.track_nowait(upto, weight)

    def has_room(self, weight: int) -> bool:
        """``track(upto, weight)`` would not block: under the cap, or nothing in flight."""
        return self._in_flight == 0 or self._in_flight + weight <= self.max_in_flight

    def track_nowait(self, upto: Mapping[bytes, Position], weight: int = 1) -> Ticket:
        """``track`` without the cap (for work that is already admitted)."""
        for stream, pos in upto.items():
            if pos.stream_id != stream:
                raise ValueError(f"upto key {stream.hex()} != position stream {pos.stream_id.hex()}")
            last = self._last.get(stream)
            if last is not None and pos.sort_key() < last.sort_key():
                raise ValueError(
                    f"stream {stream.hex()}: position {pos.time} is older than tracked {last.time}"
                )
        entries: list[tuple[bytes, _Entry]] = []
        for stream, pos in upto.items():
            entry = _Entry(pos)
            self._pending.setdefault(stream, deque()).append(entry)
            self._last[stream] = pos
            entries.append((stream, entry))
        self._in_flight += weight
        self._unresolved_tickets += 1
        return Ticket(self, entries, weight)

    def committed(self) -> dict[bytes, Position]:
        """Per stream, the highest position with nothing unresolved at or before it."""
        return dict(self._committed)

    def oldest_unresolved(self) -> dict[bytes, Position]:
        """Per stream with unresolved work, its oldest unresolved position."""
        return {stream: queue[0].position for stream, queue in self._pending.items() if queue}

    def last_tracked(self) -> dict[bytes, Position]:
        """Per stream, the newest tracked position (where a re-opened reader resumes)."""
        return dict(self._last)

    def _resolve(self, ticket: Ticket) -> None:
        for stream, entry in ticket._entries:
            entry.resolved = True
            queue = self._pending[stream]
            while queue and queue[0].resolved:
                self._committed[stream] = queue.popleft().position
            if not queue:
                del self._pending[stream]
        self._in_flight -= ticket.weight
        self._unresolved_tickets -= 1
        self._room.set()
