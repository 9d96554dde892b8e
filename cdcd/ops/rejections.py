"""The share of a table's events a destination rejects, over a sliding 5-minute window (R-61):
``cdcd_rejected_share`` and, above ``[validation] alert_ratio``, a warning log and
``cdcd_rejected_share_alert`` = 1 (back to 0, with an info log, once it drops below again).

Counts go into 10-second buckets per (table, destination); a share is computed only once at
least ``min_events`` events were seen in the window, so one bad event of three does not alert.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RejectedShare"]

WINDOW = 300.0
BUCKET = 10.0


class _Window:
    __slots__ = ("alerting", "buckets")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()  # [bucket start, events, rejected]
        self.alerting = False


class RejectedShare:
    """Per (table, destination): events and rejected events over the last ``WINDOW`` seconds."""

    def __init__(
        self, alert_ratio: float = 0.05, *, min_events: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.alert_ratio = alert_ratio
        self.min_events = min_events
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def _bucket(self, key: tuple[str, str]) -> tuple[_Window, list[float]]:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        now = self.clock()
        while w.buckets and w.buckets[0][0] <= now - WINDOW:
            w.buckets.popleft()
        if not w.buckets or w.buckets[-1][0] <= now - BUCKET:
            w.buckets.append([now, 0.0, 0.0])
        return w, w.buckets[-1]

    def processed(self, key: tuple[str, str], events: int) -> None:
        _, b = self._bucket(key)
        b[1] += events

    def rejected(self, key: tuple[str, str], events: int) -> None:
        _, b = self._bucket(key)
        b[2] += events

    def share(self, key: tuple[str, str]) -> float | None:
        """The rejected share over the window; None while fewer than ``min_events`` were seen."""
        w, _ = self._bucket(key)
        total = sum(b[1] for b in w.buckets)
        rejected = sum(b[2] for b in w.buckets)
        if total < self.min_events or total <= 0:
            return None
        return min(1.0, rejected / total)

    def check(self, key: tuple[str, str]) -> tuple[float | None, bool | None]:
        """(share, change): change is True when the share just rose past ``alert_ratio``, False
        when it just fell back below, None otherwise."""
        share = self.share(key)
        w = self._windows[key]
        above = share is not None and share > self.alert_ratio
        if above != w.alerting:
            w.alerting = above
            return share, above
        return share, None
