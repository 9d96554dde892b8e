"""``LoopLoad``: how busy the event loop's thread is, to tell a slow destination from a busy process.

A destination branch detaches from the shared reader when it holds the others back. On a process
that is itself CPU-bound (a catch-up on a small machine) the other branch only looks "waiting"
because the loop is busy: detaching would read and decode the log a second time and slow every
destination down. ``busy()`` is the share of wall time the calling thread (the event loop's) spent
on the CPU over the last ``window`` seconds, against ``threshold``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LoopLoad"]


class LoopLoad:
    """Call ``busy()`` from the event loop's thread (it measures the calling thread)."""

    def __init__(
        self,
        *,
        window: float = 2.0,
        threshold: float = 0.9,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self.window = window
        self.threshold = threshold
        self._wall = wall
        self._cpu = cpu
        self._mark = (wall(), cpu())
        self._share = 0.0

    def share(self) -> float:
        """CPU share of the last completed window (0 until one has passed)."""
        now, used = self._wall(), self._cpu()
        elapsed = now - self._mark[0]
        if elapsed >= self.window:
            self._share = (used - self._mark[1]) / elapsed
            self._mark = (now, used)
        return self._share

    def busy(self) -> bool:
        return self.share() >= self.threshold
