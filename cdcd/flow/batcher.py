"""Size/time batching for the writer (benthos ``Batcher``, arroyo ``Reduce``, Vector ``BatchConfig``).

A batch closes on whichever comes first: ``max_rows`` rows, ``max_bytes`` bytes, or ``max_wait``
seconds after its first item. ``Batcher`` separates "is it ready" (``add()`` returns True,
``until_next()`` reaches 0) from "take it" (``flush()``)::

    if batcher.add(item) or batcher.until_next() == 0:
        await deliver(batcher.flush())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

import msgspec

from cdcd.flow.clock import Clock, SystemClock

__all__ = ["BatchPolicy", "Batcher"]

T = TypeVar("T")


class BatchPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a writer batch is full. ``max_bytes`` counts the msgpack size of the events."""

    # Rows (change events) per sink write; a flush is split into writes of at most this many.
    max_rows: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Bytes per batch (None: unlimited). Measured with the caller's size function.
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = 8 * 1024 * 1024
    # Seconds a non-empty batch may wait for more rows before it is flushed anyway.
    max_wait: Annotated[float, msgspec.Meta(ge=0)] = 0.5


class Batcher(Generic[T]):
    """Accumulates items until the policy triggers. Not thread-safe; one writer task owns it.

    ``rows_of``/``bytes_of`` weigh an item (default: 1 row, 0 bytes). An item heavier than the
    whole policy still goes into a batch of its own: ``add`` then returns True at once.
    """

    def __init__(
        self,
        policy: BatchPolicy,
        *,
        clock: Clock | None = None,
        rows_of: Callable[[T], int] = lambda _: 1,
        bytes_of: Callable[[T], int] = lambda _: 0,
    ) -> None:
        self.policy = policy
        self.clock: Clock = clock or SystemClock()
        self._rows_of = rows_of
        self._bytes_of = bytes_of
        self._items: list[T] = []
        self._rows = 0
        self._bytes = 0
        self._started: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, item: T) -> bool:
        """Append ``item``; True when the row or byte limit is now reached (flush next)."""
        if not self._items:
            self._started = self.clock.monotonic()
        self._items.append(item)
        self._rows += self._rows_of(item)
        self._bytes += self._bytes_of(item)
        return self.full()

    def full(self) -> bool:
        """Row or byte limit reached."""
        p = self.policy
        return self._rows >= p.max_rows or (p.max_bytes is not None and self._bytes >= p.max_bytes)

    def until_next(self) -> float | None:
        """Seconds until the batch must be flushed on time; None when empty, 0 when due now."""
        if self._started is None:
            return None
        if self.full():
            return 0.0
        return max(0.0, self._started + self.policy.max_wait - self.clock.monotonic())

    def flush(self) -> list[T]:
        """Take the accumulated items (possibly empty) and start a new batch."""
        items, self._items = self._items, []
        self._rows = self._bytes = 0
        self._started = None
        return items
