"""``ReadLimiter``: caps on the load cdcd's log reads put on Scylla, shared by every reader of a
replica (shared readers and catch-up readers alike).

* ``max_concurrent``: log queries (pages) in flight at once; a reader waits for a slot before it
  asks for a page and frees it when the page arrives.
* ``max_rate``: rows per second on average (0 = unlimited), a token bucket that may go into debt
  by one page: a page is never split, and the next request waits until the debt is paid back.
  Bursts are at most one second's worth of rows (or one page, when a page is larger).
* Catch-up readers (destinations that fell behind and read on their own) go through
  ``catch_up()``, a view that also holds one of at most ``catch_up_slots`` slots of their own
  (default: an eighth of ``max_concurrent``, at least 1; 1 when uncapped): a destination catching
  up after an outage reads, decodes and writes one process's worth of CPU, and must not starve
  the shared readers that keep the other destinations current.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

__all__ = ["ReadLimiter", "ReadSlots"]


class ReadLimiter:
    """Concurrency and rate caps for log reads. One event loop; not thread-safe."""

    def __init__(
        self,
        *,
        max_concurrent: int = 0,
        max_rate: float = 0.0,
        catch_up_slots: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_concurrent < 0 or max_rate < 0:
            raise ValueError("read caps must be >= 0 (0 = unlimited)")
        if catch_up_slots is None:
            catch_up_slots = max(1, max_concurrent // 8)
        self._catch_up = _CatchUp(self, asyncio.Semaphore(catch_up_slots))
        self.max_concurrent = max_concurrent
        self.max_rate = max_rate
        self.clock = clock
        self.sleep = sleep
        self._slots = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._tokens = max_rate
        self._stamp = clock()
        self.in_flight = 0  # pages being fetched now
        self.rows = 0  # rows read through this limiter

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[None]:
        """Hold a slot for one page request (after paying any rate debt)."""
        await self._pay()
        if self._slots is not None:
            await self._slots.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self._slots is not None:
                self._slots.release()

    def catch_up(self) -> ReadSlots:
        """The same caps, plus the catch-up readers' own (smaller) concurrency cap."""
        return self._catch_up

    def spend(self, rows: int) -> None:
        """``rows`` arrived: take them from the bucket (it may go into debt)."""
        self.rows += rows
        if self.max_rate:
            self._refill()
            self._tokens -= rows

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.max_rate, self._tokens + (now - self._stamp) * self.max_rate)
        self._stamp = now

    async def _pay(self) -> None:
        if not self.max_rate:
            return
        while True:
            self._refill()
            if self._tokens >= 0:
                return
            await self.sleep(-self._tokens / self.max_rate)


class ReadSlots(Protocol):
    """What a reader needs of a limiter: a slot per page, and the rows it got."""

    def page(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    def spend(self, rows: int) -> None: ...


class _CatchUp:
    """``ReadLimiter.catch_up()``: a catch-up slot, then the shared caps."""

    def __init__(self, parent: ReadLimiter, slots: asyncio.Semaphore) -> None:
        self._parent = parent
        self._slots = slots

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[None]:
        async with self._slots, self._parent.page():
            yield

    def spend(self, rows: int) -> None:
        self._parent.spend(rows)
