"""``ReadLimiter``: caps on the load cdcd's log reads put on Scylla, shared by every reader of a
replica (shared readers and catch-up readers alike).

* ``max_concurrent``: log queries (pages) in flight at once; a reader waits for a slot before it
  asks for a page and frees it when the page arrives.
* ``max_rate``: rows per second on average (0 = unlimited), a token bucket that may go into debt
  by one page: a page is never split, and the next request waits until the debt is paid back.
  Bursts are at most one second's worth of rows (or one page, when a page is larger).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["ReadLimiter"]


class ReadLimiter:
    """Concurrency and rate caps for log reads. One event loop; not thread-safe."""

    def __init__(
        self,
        *,
        max_concurrent: int = 0,
        max_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 0 or max_rate < 0:
            raise ValueError("read caps must be >= 0 (0 = unlimited)")
        self.max_concurrent = max_concurrent
        self.max_rate = max_rate
        self.clock = clock
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
            if self._tokens > 0:
                return
            await asyncio.sleep(-self._tokens / self.max_rate)
