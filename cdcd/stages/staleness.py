"""``StalenessStage``: events too old to apply, per destination branch (R-22).

An event whose write time (``cdc$time``) lies more than ``[staleness] max_age`` before the moment
it is read is rejected with reason ``too_old`` and not applied; the branch writes it to the
staleness audit (the dead-letter store's ``stale`` queue, ``cdcd.state.deadletter``) with the
destination, table, key (masked: masking ran before the fan-out), the event's write time, the
time it was read and the threshold, and counts it in ``cdcd_events_skipped_total{reason="too_old"}``.
Stale and duplicate events against the destination row's version are skipped by the sinks'
version guards (``cdcd.sinks.outcome``); the writer audits the stale ones (stage
``version-guard``, with the row's write time) and counts ``reason="stale"|"duplicate"``.

``max_age = "0"``, ``[staleness] enabled = false`` and ``cdcd run --backfill`` turn the check off;
the daemon then records that in the audit (``audit_off``) and logs it.

``trim_audit`` keeps the audit bounded: entries older than ``audit_retention`` are deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from cdcd.config.model import Config
from cdcd.config.values import Duration
from cdcd.events import ChangeEvent
from cdcd.stages import RejectionLike, StageResult
from cdcd.state.deadletter import DeadLetterStore

__all__ = ["StaleRejection", "StalenessStage", "audit_off", "maintain_audit", "off_reason", "trim_audit"]

log = logging.getLogger(__name__)


class StaleRejection(msgspec.Struct, frozen=True, kw_only=True):
    """A staleness rejection; ``label`` is the ``reason`` label of the skipped-events metric."""

    event: ChangeEvent
    stage: str
    reason: str
    label: str


def _rfc3339(us: int) -> str:
    return (
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class StalenessStage:
    """Rejects events written longer than ``max_age`` seconds before ``now()`` (reason too_old)."""

    name = "staleness"

    def __init__(self, max_age: float, *, now: Callable[[], float] = time.time) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be > 0 (leave the stage out to turn the check off)")
        self.max_age = max_age
        self.now = now

    def process(self, events: Sequence[ChangeEvent]) -> StageResult:
        read_at = self.now()
        cutoff_us = int((read_at - self.max_age) * 1_000_000)
        passed: list[ChangeEvent] = []
        rejected: list[RejectionLike] = []
        for e in events:
            if e.write_time_us >= cutoff_us:
                passed.append(e)
                continue
            age = read_at - e.write_time_us / 1e6
            rejected.append(
                StaleRejection(
                    event=e,
                    stage=self.name,
                    label="too_old",
                    reason=(
                        f"too_old: event written at {_rfc3339(e.write_time_us)}, read at "
                        f"{_rfc3339(int(read_at * 1e6))} ({Duration(round(age, 3))} old; "
                        f"staleness.max_age {Duration(self.max_age)})"
                    ),
                )
            )
        return StageResult(passed=passed, rejected=rejected)


async def trim_audit(store: DeadLetterStore, dest: str, *, before: float) -> int:
    """Delete staleness-audit entries of ``dest`` first recorded before ``before`` (epoch s)."""
    _, okey = store._keys("stale", dest)
    ids: list[bytes] = await store.client.zrangebyscore(okey, "-inf", f"({before}")  # type: ignore[assignment]
    if not ids:
        return 0
    return await store.delete("stale", dest, [i.decode() for i in ids])


async def audit_off(store: DeadLetterStore, dest: str, table: str, *, by: str, replica: str) -> None:
    """Record in the audit that the too_old check is off for (table, destination) from now on:
    hash ``<prefix>:dlq:stale:<dest>:off``, field = table, value = JSON {since, by, replica}."""
    ekey, _ = store._keys("stale", dest)
    off_key = ekey[: -len(":e")] + ":off"
    await store.client.hset(
        off_key, table, json.dumps({"since": _rfc3339(int(time.time() * 1e6)), "by": by, "replica": replica})
    )


def off_reason(cfg: Config, *, backfill: bool) -> str | None:
    """Why the too_old check is off (None: it is on)."""
    if backfill:
        return "cdcd run --backfill"
    if not cfg.staleness.enabled:
        return "staleness.enabled = false"
    if cfg.staleness.max_age <= 0:
        return 'staleness.max_age = "0"'
    return None


async def maintain_audit(
    store: DeadLetterStore,
    cfg: Config,
    *,
    off_by: str | None,
    replica: str,
    sleep: Callable[[float], Awaitable[None]],
    stopping: Callable[[], bool],
    every: float = 60.0,
) -> None:
    """Runs while cdcd does: records once that the too_old check is off (when it is), then trims
    the audit of every destination to ``audit_retention`` every ``every`` seconds. Redis trouble
    is retried at the next round (the audit is bounded a little later)."""
    marked = off_by is None
    while not stopping():
        try:
            if not marked:
                assert off_by is not None
                for t in cfg.tables:
                    for dest in t.destinations:
                        await audit_off(store, dest, t.source, by=off_by, replica=replica)
                marked = True
            before = time.time() - cfg.staleness.audit_retention
            for dest in cfg.destinations:
                await trim_audit(store, dest, before=before)
        except Exception as exc:
            log.warning("staleness audit upkeep failed; retrying later: %s", exc)
        await sleep(every)
