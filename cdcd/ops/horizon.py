"""Time until data loss (R-43): how long a destination can stay as far behind as it is before the
CDC log expires changes it has not applied yet.

``time_until_loss = cdc log ttl - replication lag`` per (table, destination); the lag is the
largest of its running stream groups' (the oldest unapplied change decides). A table whose log
never expires (``ttl = 0``) has no horizon. A negative figure means log rows the destination
still needed have already expired.

``DataLossWatch`` turns the figures into log events: a warning when the time drops below the
threshold (``[pipeline] data_loss_warning``, but at most half the table's TTL, so a short TTL
does not warn forever), an error once it reaches zero (the lag passed the TTL: changes may have
expired unapplied; reported even with the warning turned off, and at once even when a warning
was just logged), each repeated every ``repeat`` seconds while it lasts, and one "recovered"
event when it is back above the threshold. Pure: the daemon polls it, the metrics collector and
``/status`` use ``fold_lag``/``time_until_loss``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DataLossWatch", "Observation", "fold_lag", "threshold_for", "time_until_loss"]

FINISHED = ("done", "closed", "terminated")


def fold_lag(
    statuses: Iterable[Any], stored: Mapping[tuple[str, str], float] | None = None
) -> dict[tuple[str, str], float]:
    """(table, destination) -> the largest lag of its unfinished groups (those with a lag); a
    (table, destination) without any status takes its ``stored`` lag (estimated from the
    checkpoints while no pipeline runs: its destination has been down since start-up)."""
    out: dict[tuple[str, str], float] = {}
    seen: set[tuple[str, str]] = set()
    for st in statuses:
        key = (st.table, st.destination)
        seen.add(key)
        if st.lag_seconds is None or st.state in FINISHED:
            continue
        out[key] = max(out.get(key, 0.0), float(st.lag_seconds))
    for key, lag in (stored or {}).items():
        if key not in seen:
            out[key] = lag
    return out


def time_until_loss(ttl_seconds: int, lag_seconds: float | None) -> float | None:
    """CDC log TTL minus the lag; None when the log never expires or the lag is unknown."""
    if ttl_seconds <= 0 or lag_seconds is None:
        return None
    return ttl_seconds - lag_seconds


def threshold_for(configured: float, ttl_seconds: int) -> float:
    """The warning threshold of a table: the configured one, at most half its TTL."""
    return min(configured, ttl_seconds / 2)


@dataclass(frozen=True)
class Observation:
    """What ``DataLossWatch.observe`` found worth logging."""

    kind: Literal["warning", "expired", "recovered"]
    table: str
    destination: str
    remaining: float
    lag: float
    ttl: int
    threshold: float


class DataLossWatch:
    """Per (table, destination): what was last reported (warning or expired) and when."""

    def __init__(self, threshold: float, *, repeat: float = 300.0) -> None:
        self.threshold = threshold  # 0 disables the warnings (the metric and the errors stay)
        self.repeat = repeat
        # key -> (monotonic time of the last report, its kind)
        self._reported: dict[tuple[str, str], tuple[float, str]] = {}

    def observe(
        self, table: str, destination: str, ttl: int, lag: float | None, now: float
    ) -> Observation | None:
        remaining = time_until_loss(ttl, lag)
        key = (table, destination)
        if remaining is None:
            self._reported.pop(key, None)
            return None
        assert lag is not None
        limit = threshold_for(max(self.threshold, 0.0), ttl)
        last = self._reported.get(key)
        kind: Literal["warning", "expired"] | None = None
        if remaining <= 0:
            kind = "expired"
        elif remaining < limit:
            kind = "warning"
        if kind is not None:
            escalated = last is not None and last[1] == "warning" and kind == "expired"
            if last is not None and not escalated and now - last[0] < self.repeat:
                return None
            self._reported[key] = (now, kind)
            return Observation(kind, table, destination, remaining, lag, ttl, limit)
        if last is not None:
            del self._reported[key]
            return Observation("recovered", table, destination, remaining, lag, ttl, limit)
        return None

    def forget(self, table: str, destination: str) -> None:
        self._reported.pop((table, destination), None)
