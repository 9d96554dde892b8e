"""A periodic progress line per (table, destination) while cdcd runs.

Every ``[logging] progress_interval`` seconds (0 = off) ``ProgressLog`` logs one INFO record
``"replication progress"`` per (table, destination) with a pipeline: ``state`` (the worst of its
stream groups), ``lag_seconds`` (as in ``/status``), ``events_per_second`` applied since the
previous line, ``events_applied`` (since start-up), and ``groups`` / ``catching_up`` (stream groups,
and those reading the log on their own). A quiet pipeline still gets its line: "0 events/s, lag
1.2 s" says it is alive and caught up.

It only reads what the status callable returns (``cdcd.flow.PipelineStatus`` values); the daemon
runs ``ProgressLog.run`` as one of its tasks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from cdcd.ops.horizon import fold_lag
from cdcd.ops.http import worst_state
from cdcd.ops.logging import get_logger, scrub

__all__ = ["ProgressLog"]

log = get_logger("cdcd.ops.progress")

# How long run() sleeps per round when the line is off (it only waits for the stop then).
_IDLE = 3600.0


class ProgressLog:
    """``statuses()``: the current pipeline statuses; ``sleep(seconds)``: waits (returning early
    once cdcd stops); ``stopping()``: True once cdcd stops; ``clock()``: monotonic seconds."""

    def __init__(
        self,
        statuses: Callable[[], Iterable[Any]],
        interval: float,
        *,
        sleep: Callable[[float], Awaitable[Any]],
        stopping: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.statuses = statuses
        self.interval = float(interval)
        self.sleep = sleep
        self.stopping = stopping
        self.clock = clock
        self._last_time = clock()
        self._applied: dict[tuple[str, str, str], int] = {}  # (table, destination, group) -> count

    async def run(self) -> None:
        """Log a round every ``interval`` seconds until cdcd stops; never raises."""
        while not self.stopping():
            await self.sleep(self.interval if self.interval > 0 else _IDLE)
            if self.interval > 0 and not self.stopping():
                try:
                    self.tick()
                except Exception as exc:  # a progress line is not worth stopping cdcd for
                    log.debug("progress line failed", error=scrub(f"{type(exc).__name__}: {exc}"))

    def tick(self) -> list[dict[str, Any]]:
        """Log one line per (table, destination) and return their fields."""
        now = self.clock()
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time = now
        statuses = list(self.statuses())
        lags = fold_lag(statuses)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        seen: dict[tuple[str, str, str], int] = {}
        for st in statuses:
            key = (st.table, st.destination)
            row = rows.setdefault(
                key,
                {"table": st.table, "destination": st.destination, "states": [], "new": 0,
                 "events_applied": 0, "groups": 0, "catching_up": 0},
            )  # fmt: skip
            applied = int(st.events_applied)
            before = self._applied.get((st.table, st.destination, st.group), 0)
            # a restarted pipeline counts from 0 again: all of its count is new
            row["new"] += applied - before if applied >= before else applied
            seen[(st.table, st.destination, st.group)] = applied
            row["events_applied"] += applied
            row["states"].append(st.state)
            row["groups"] += 1
            if getattr(st, "mode", "shared") == "catching-up":
                row["catching_up"] += 1
        self._applied = seen
        out = []
        for key, row in sorted(rows.items()):
            lag = lags.get(key)
            fields = {
                "table": row["table"],
                "destination": row["destination"],
                "state": worst_state(row["states"]),
                "lag_seconds": None if lag is None else round(lag, 1),
                "events_per_second": round(row["new"] / elapsed, 1),
                "events_applied": row["events_applied"],
                "groups": row["groups"],
                "catching_up": row["catching_up"],
            }
            log.info("replication progress", **fields)
            out.append(fields)
        return out
