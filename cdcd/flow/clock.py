"""Injected time, so timeouts, backoff and commit intervals are testable without sleeping.

Everything in ``cdcd.flow`` that waits or measures takes a ``Clock`` (arroyo ``utils/clock.py``,
bytewax ``TimeTestingGetter``). ``SystemClock`` is the real one; ``ManualClock`` only moves when a
test calls ``advance()``, which wakes every sleeper whose deadline has passed.

``wait_first(clock, awaitable, seconds)`` is the clock-aware ``asyncio.wait_for``: it returns
``(True, result)`` or ``(False, None)`` on timeout, measured on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

__all__ = ["Clock", "ManualClock", "SystemClock", "wait_first"]

T = TypeVar("T")


class Clock(Protocol):
    """Source of time. ``monotonic()`` for intervals, ``time()`` for wall-clock (epoch seconds)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None:
        """Suspend for ``seconds`` of this clock's time. Cancellable; ``<= 0`` just yields."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only on ``advance()``. Sleepers wake when their deadline is reached.

    ``time()`` is ``start_time`` plus the same offset as ``monotonic()``. ``sleepers`` is the
    number of pending sleeps, so a test can wait until the code under test is blocked on time
    (``await clock.until_sleeping()``) before advancing.
    """

    def __init__(self, *, start_monotonic: float = 1000.0, start_time: float = 1_700_000_000.0) -> None:
        self._mono = start_monotonic
        self._offset = start_time - start_monotonic
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._mono + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """Pending (not cancelled) sleeps."""
        return sum(1 for _, _, f in self._heap if not f.done())

    def next_deadline(self) -> float | None:
        """Seconds until the earliest pending sleeper wakes, or None when nobody sleeps."""
        self._drop_cancelled()
        return None if not self._heap else max(0.0, self._heap[0][0] - self._mono)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline is now reached."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: negative step {seconds}")
        self._mono += seconds
        while self._heap and self._heap[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)

    async def until_sleeping(self, count: int = 1, *, max_spins: int = 10_000) -> None:
        """Yield to the loop until at least ``count`` sleeps are pending (test helper).

        Raises RuntimeError after ``max_spins`` loop iterations so a wrong expectation fails
        the test instead of hanging it.
        """
        for _ in range(max_spins):
            if self.sleepers >= count:
                return
            await asyncio.sleep(0)
        raise RuntimeError(f"ManualClock: expected {count} sleeper(s), have {self.sleepers}")

    async def run_until(self, done: Awaitable[T], *, step: float | None = None, limit: float = 86_400.0) -> T:
        """Drive ``done`` to completion, jumping time to the next sleeper whenever it stalls.

        ``step`` caps each jump. Raises RuntimeError once ``limit`` seconds of clock time have
        passed; the awaitable's own exception propagates. When nothing sleeps on this clock the
        awaitable is waiting on real I/O, and real time is given to it instead.
        """
        task = asyncio.ensure_future(done)
        start = self._mono
        try:
            while not task.done():
                for _ in range(50):
                    await asyncio.sleep(0)
                    if task.done():
                        break
                if task.done():
                    break
                nxt = self.next_deadline()
                if nxt is None:
                    # Nothing sleeps on this clock: the task waits on I/O; give the loop real time.
                    await asyncio.sleep(0.001)
                    continue
                if self._mono - start > limit:
                    raise RuntimeError(f"ManualClock.run_until: still running after {limit} s")
                self.advance(nxt if step is None else min(nxt, step))
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)


async def wait_first(clock: Clock, awaitable: Awaitable[T], seconds: float | None) -> tuple[bool, T | None]:
    """Await ``awaitable`` for at most ``seconds`` of ``clock`` time.

    Returns ``(True, result)``, or ``(False, None)`` when the time ran out first; the awaitable
    is then cancelled. ``seconds=None`` waits forever. Exceptions of the awaitable propagate.
    """
    task = asyncio.ensure_future(awaitable)
    if seconds is None:
        return True, await task
    sleeper: asyncio.Future[None] | None = None
    waiters: set[asyncio.Future[Any]] = {task}
    try:
        if isinstance(clock, SystemClock):
            done, _ = await asyncio.wait(waiters, timeout=max(0.0, seconds))
        else:
            sleeper = asyncio.ensure_future(clock.sleep(seconds))
            waiters.add(sleeper)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        if sleeper is not None:
            sleeper.cancel()
    if task in done:
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError
    return False, None
