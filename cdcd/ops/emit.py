"""One function per notable happening: it logs and counts together (Vector ``internal_events``).

Call these instead of touching ``cdcd.ops.metrics`` or writing ad-hoc log lines, so every
happening has the same fields in logs and the same labels in metrics. Messages are fixed strings;
details go in fields. Levels follow style.md rule 9: ERROR only when data is at risk or an
operator must act, WARNING for retried trouble, INFO for lifecycle, DEBUG per batch.

``FlowTelemetry`` implements ``cdcd.flow.FlowEvents`` (the pipelines' hook) with these rules.
None of these functions raise or block.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace

from cdcd import __version__
from cdcd.errors import CdcdError
from cdcd.events import ChangeEvent, Op, Position
from cdcd.flow.contracts import BranchMode, PipelineId, PipelineState, WriteOutcomeLike
from cdcd.ops import metrics as m
from cdcd.ops.correlation import batch_fields
from cdcd.ops.horizon import Observation
from cdcd.ops.logging import get_logger, scrub
from cdcd.ops.rejections import RejectedShare

__all__ = [
    "FlowTelemetry",
    "config_loaded",
    "config_reloaded",
    "dependency_checked",
    "dlq_size",
    "generation_switched",
    "group_finished",
    "group_started",
    "lease_acquired",
    "lease_lost",
    "lease_rebalanced",
    "lease_released",
    "operation_label",
    "pipeline_failed",
    "reconcile_finished",
    "replica",
    "set_replica",
    "shutdown_complete",
    "shutdown_requested",
    "snapshot_finished",
    "snapshot_progress",
    "source_error",
    "startup",
    "table_ready",
    "undecodable_group",
]

log = get_logger("cdcd.ops")
_replica = "unknown"

_OPS = {
    Op.INSERT: "insert",
    Op.UPDATE: "update",
    Op.ROW_DELETE: "delete",
    Op.SERVICE_ROW_DELETE: "delete",
    Op.PARTITION_DELETE: "partition_delete",
    Op.SERVICE_PARTITION_DELETE: "partition_delete",
    Op.RANGE_DELETE: "range_delete",
}


def set_replica(name: str) -> None:
    """Name this replica in every metric (``replica`` label) and in ``cdcd_build_info``."""
    global _replica
    _replica = name
    m.BUILD_INFO.info({"version": __version__, "replica": name})


def replica() -> str:
    return _replica


def operation_label(op: Op) -> str:
    """The bounded ``operation`` label of an event (see ``metrics.OPERATIONS``)."""
    return _OPS.get(op, "other")


def _error_type(exc: BaseException) -> str:
    return type(exc).__name__


def _error_text(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {exc}")[:500]


# ---------------------------------------------------------------------------------- lifecycle
def startup(*, config_file: str, tables: int, destinations: Sequence[str]) -> None:
    log.info("cdcd starting", version=__version__, replica=_replica, config=config_file,
             tables=tables, destinations=list(destinations))  # fmt: skip


def config_loaded(*, config_file: str) -> None:
    log.info("configuration loaded", config=config_file)


def shutdown_requested(*, signal: str, forced: bool) -> None:
    if forced:
        log.warning("second signal: exiting without draining", signal=signal)
    else:
        log.info("shutting down: draining in-flight batches", signal=signal)


def shutdown_complete(*, seconds: float, abandoned: int) -> None:
    if abandoned:
        log.warning("shutdown deadline passed; pipelines abandoned (they resume from their checkpoint)",
                    seconds=round(seconds, 3), abandoned=abandoned)  # fmt: skip
    else:
        log.info("shutdown complete", seconds=round(seconds, 3))


def dependency_checked(*, dependency: str, ok: bool, detail: str, seconds: float) -> None:
    """A health check of Scylla, Redis or a destination (start-up, /readyz, check-config)."""
    m.DEPENDENCY_UP.labels(dependency, _replica).set(1 if ok else 0)
    if ok:
        log.debug("dependency healthy", dependency=dependency, seconds=round(seconds, 3))
    else:
        log.warning("dependency unhealthy", dependency=dependency, error=scrub(_without_own_class(detail)))


def _own_error_names() -> set[str]:
    names, todo = set(), [CdcdError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _without_own_class(detail: str) -> str:
    """``"SinkUnavailable: pg: PostgreSQL at h:5432: ..."`` -> ``"pg: PostgreSQL at h:5432: ..."``:
    cdcd's own errors name what failed in their message; their class name is noise."""
    name, sep, rest = detail.partition(": ")
    return rest if sep and rest and name in _own_error_names() else detail


def table_ready(*, table: str, destination: str, ttl: int) -> None:
    """A source table's target is ensured in a destination; replication starts."""
    m.CDC_TTL.labels(table, _replica).set(ttl)
    log.info("table ready", table=table, destination=destination, cdc_ttl=ttl)


def data_loss_horizon(obs: Observation) -> None:
    """A destination's time until data loss crossed its threshold (R-43), reached zero (the lag
    passed the TTL), or recovered."""
    fields = {
        "table": obs.table, "destination": obs.destination, "lag_seconds": round(obs.lag, 1),
        "cdc_ttl": obs.ttl, "time_until_data_loss_seconds": round(obs.remaining, 1),
        "threshold_seconds": round(obs.threshold, 1),
    }  # fmt: skip
    if obs.kind == "warning":
        log.warning(
            "destination lag approaches the CDC log TTL: changes expire before they are applied", **fields
        )
    elif obs.kind == "expired":  # data at risk now: an operator must check the destination
        log.error(
            "destination lag exceeds the CDC log TTL: changes may have expired before they were applied",
            **fields,
        )
    else:
        log.info("destination lag back below the data-loss threshold", **fields)


# ------------------------------------------------------------------------------- stream groups
def group_started(*, table: str, destination: str, group: str, streams: int, end: int | None) -> None:
    log.info("stream group started", table=table, destination=destination, group=group,
             streams=streams, generation_closed=end is not None)  # fmt: skip


def group_finished(*, table: str, destination: str, group: str, state: str) -> None:
    log.info("stream group finished", table=table, destination=destination, group=group, state=state)


def generation_switched(*, table: str, destination: str, old: int, new: int) -> None:
    """Every group of generation ``old`` is applied; reading moves on to ``new``."""
    m.GENERATION_SWITCHES.labels(table, destination, _replica).inc()
    log.info(
        "generation switch", table=table, destination=destination, old_generation=old, new_generation=new
    )


def pipeline_failed(
    *, table: str, destination: str, group: str, error: BaseException, retry_in: float
) -> None:
    """A destination's branch of a group stopped on a non-retriable error: that group is not
    replicated into that destination until the branch restarts from its checkpoint."""
    m.ERRORS.labels(table, destination, "processing", _error_type(error), _replica).inc()
    log.error("stream group stopped on an error; restarting it from its checkpoint", table=table,
              destination=destination, group=group, retry_in=round(retry_in, 1),
              error=_error_text(error))  # fmt: skip


def source_error(*, table: str, destination: str, error: BaseException) -> None:
    m.ERRORS.labels(table, destination, "receiving", _error_type(error), _replica).inc()
    log.warning("reading the CDC log failed; retrying", table=table, destination=destination,
                error=_error_text(error))  # fmt: skip


def undecodable_group(*, table: str, destination: str, reason: str) -> None:
    """A CDC log group the decoder could not turn into events (routed, not applied)."""
    m.ERRORS.labels(table, destination, "receiving", "UndecodableGroup", _replica).inc()
    log.error("undecodable CDC log group moved to the dead-letter queue", table=table,
              destination=destination, reason=scrub(reason))  # fmt: skip


def log_rows_read(table: str, rows: int) -> None:
    """A page of CDC log rows was read (counted, not logged: it happens for every page)."""
    m.LOG_ROWS_READ.labels(table, _replica).inc(rows)


def dlq_size(*, destination: str, kind: str, size: int) -> None:
    m.DLQ_SIZE.labels(destination, kind, _replica).set(size)


# ------------------------------------------------------------------------------------- leases
def lease_acquired(*, table: str, group: str, epoch: int) -> None:
    m.LEASE_CHANGES.labels("acquired", _replica).inc()
    m.LEASES_HELD.labels(_replica).inc()
    log.info("lease acquired", table=table, group=group, epoch=epoch)


def lease_released(*, table: str, group: str, epoch: int, reason: str) -> None:
    """A lease given up on purpose (hand-over, shutdown) after its work stopped."""
    m.LEASE_CHANGES.labels("released", _replica).inc()
    m.LEASES_HELD.labels(_replica).dec()
    log.info("lease released", table=table, group=group, epoch=epoch, reason=reason)


def lease_lost(*, table: str, group: str, epoch: int, reason: str) -> None:
    """A lease could not be renewed (Redis unreachable) or was taken over: its work stops."""
    m.LEASE_CHANGES.labels("lost", _replica).inc()
    m.LEASES_HELD.labels(_replica).dec()
    log.warning("lease lost; the group's work stops", table=table, group=group, epoch=epoch, reason=reason)


def lease_rebalanced(*, held: int, share: int, replicas: int) -> None:
    m.REBALANCES.labels(_replica).inc()
    log.info("handing stream groups over", held=held, share=share, replicas=replicas)


def config_reloaded(*, result: str, changes: Sequence[str], refused: Sequence[str], error: str = "") -> None:
    """SIGHUP or POST /admin/reload: applied, unchanged, refused (non-live keys changed) or failed."""
    m.CONFIG_RELOADS.labels(result, _replica).inc()
    if result == "refused":
        log.error("configuration reload refused: these settings cannot change while running; "
                  "the old configuration stays in force", refused=list(refused))  # fmt: skip
    elif result == "failed":
        log.error("configuration reload failed; the old configuration stays in force", error=scrub(error))
    else:
        log.info("configuration reloaded", result=result, changes=list(changes))


# ------------------------------------------------------------------------------------ pipelines
def _observe_many(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, as one update per bucket: prometheus_client
    has no bulk observe, so this adds to the child's bucket and sum values the way ``observe``
    does (first bucket whose upper bound is >= the amount). Falls back to ``observe`` when the
    histogram child does not look like prometheus_client's."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for a in amounts:
            histogram.observe(a)
        return
    if not amounts:
        return
    total.inc(sum(amounts))
    for i, n in Counter([bisect_left(bounds, a) for a in amounts]).items():
        buckets[i].inc(n)


class FlowTelemetry:
    """``cdcd.flow.FlowEvents``: what pipelines report, logged and counted."""

    def __init__(self, clock: Any = time, alert_ratio: float = 0.05) -> None:
        self.clock = clock  # .time(): epoch seconds (latency = commit time - source write time)
        self.shares = RejectedShare(alert_ratio)  # [validation] alert_ratio

    def queued(self, pid: PipelineId, queue: str, reasons: Mapping[str, int]) -> None:
        t, d = pid.table, pid.destination
        for reason, n in reasons.items():
            m.REJECTED.labels(t, d, queue, reason or "other", _replica).inc(n)
        if queue == "validation":
            self.shares.rejected((t, d), sum(reasons.values()))
            self._share(pid)

    def processed(self, pid: PipelineId, events: int) -> None:
        self.shares.processed((pid.table, pid.destination), events)
        self._share(pid)

    def _share(self, pid: PipelineId) -> None:
        t, d = pid.table, pid.destination
        share, change = self.shares.check((t, d))
        m.REJECTED_SHARE.labels(t, d, _replica).set(share or 0.0)
        if change is True:
            m.REJECTED_ALERT.labels(t, d, _replica).set(1)
            log.warning("rejected share above validation.alert_ratio", table=t, destination=d,
                        share=round(share or 0.0, 4), alert_ratio=self.shares.alert_ratio)  # fmt: skip
        elif change is False:
            m.REJECTED_ALERT.labels(t, d, _replica).set(0)
            log.info("rejected share back below validation.alert_ratio", table=t, destination=d,
                     share=round(share or 0.0, 4), alert_ratio=self.shares.alert_ratio)  # fmt: skip

    def batch_written(
        self, pid: PipelineId, events: Sequence[ChangeEvent], outcome: WriteOutcomeLike, seconds: float
    ) -> None:
        t, d = pid.table, pid.destination
        m.BATCH_SECONDS.labels(t, d, _replica).observe(seconds)
        # Once per batch, not per event: operations counted in C (Counter), latencies bucketed
        # together (one histogram update per bucket instead of one observe() per event).
        by_op: dict[str, int] = {}
        for op, n in Counter([ev.op for ev in events]).items():
            name = _OPS.get(op, "other")
            by_op[name] = by_op.get(name, 0) + n
        now_us = self.clock.time() * 1e6
        _observe_many(
            m.REPLICATION_LATENCY.labels(t, d, _replica),
            [max(0.0, (now_us - ev.write_time_us) / 1e6) for ev in events],
        )
        for label, n in by_op.items():
            m.EVENTS_APPLIED.labels(t, d, label, _replica).inc(n)
        if outcome.skipped_stale:
            # Per event when the sink says which (cdcd.sinks.Skipped): replays are "duplicate".
            detail = getattr(outcome, "skipped", ())
            dups = sum(1 for x in detail if x.reason == "duplicate")
            stale = len(detail) - dups if detail else outcome.skipped_stale
            if stale:
                m.EVENTS_SKIPPED.labels(t, d, "stale", _replica).inc(stale)
            if dups:
                m.EVENTS_SKIPPED.labels(t, d, "duplicate", _replica).inc(dups)
        span = trace.get_current_span()  # the branch's cdcd.write span (tracing on)
        if span.is_recording():
            span.set_attributes({"applied": outcome.applied, "skipped_stale": outcome.skipped_stale})
        log.debug("batch written", table=t, destination=d, group=pid.group, **batch_fields(events),
                  applied=outcome.applied, skipped_stale=outcome.skipped_stale,
                  seconds=round(seconds, 4))  # fmt: skip

    def write_failed(self, pid: PipelineId, error: BaseException, attempt: int, delay: float) -> None:
        m.ERRORS.labels(pid.table, pid.destination, "sending", _error_type(error), _replica).inc()
        m.RETRIES.labels(pid.table, pid.destination, _replica).inc()
        log.warning("destination write failed; retrying", table=pid.table, destination=pid.destination,
                    group=pid.group, attempt=attempt, retry_in=round(delay, 3),
                    error=_error_text(error))  # fmt: skip

    def rejected(self, pid: PipelineId, stage: str, count: int) -> None:
        m.EVENTS_SKIPPED.labels(pid.table, pid.destination, stage, _replica).inc(count)
        log.info("events rejected by a stage", table=pid.table, destination=pid.destination,
                 group=pid.group, stage=stage, count=count)  # fmt: skip

    def dead_lettered(self, pid: PipelineId, count: int) -> None:
        m.DEAD_LETTERS.labels(pid.table, pid.destination, _replica).inc(count)
        log.error("events moved to the dead-letter store", table=pid.table, destination=pid.destination,
                  group=pid.group, count=count)  # fmt: skip

    def committed(self, pid: PipelineId, positions: Mapping[bytes, Position]) -> None:
        m.CHECKPOINTS_SAVED.labels(pid.table, pid.destination, _replica).inc()
        log.debug("checkpoint saved", table=pid.table, destination=pid.destination, group=pid.group,
                  streams=len(positions))  # fmt: skip

    def commit_failed(self, pid: PipelineId, error: BaseException) -> None:
        m.ERRORS.labels(pid.table, pid.destination, "processing", _error_type(error), _replica).inc()
        log.warning("checkpoint save failed; retrying", table=pid.table, destination=pid.destination,
                    group=pid.group, error=_error_text(error))  # fmt: skip

    def state_changed(self, pid: PipelineId, old: PipelineState, new: PipelineState) -> None:
        fields = {
            "table": pid.table,
            "destination": pid.destination,
            "group": pid.group,
            "old": old,
            "new": new,
        }
        if new == "circuit-open":
            log.warning("circuit breaker open: destination failing, writes paused", **fields)
        elif new in ("failed", "terminated"):
            log.warning("pipeline state changed", **fields)
        else:
            log.debug("pipeline state changed", **fields)

    def mode_changed(self, pid: PipelineId, old: BranchMode, new: BranchMode, reason: str) -> None:
        m.BRANCH_MODE_CHANGES.labels(pid.table, pid.destination, new, _replica).inc()
        message = "branch detached: reading on its own" if new == "catching-up" else "branch reads shared"
        log.info(message, table=pid.table, destination=pid.destination, group=pid.group,
                 old=old, new=new, reason=reason)  # fmt: skip


def snapshot_progress(*, table: str, rows: int, ranges_done: int, ranges_total: int) -> None:
    """A snapshot (``cdcd.snapshot``) moved on: the gauges follow it."""
    m.SNAPSHOT_ROWS.labels(table, _replica).set(rows)
    m.SNAPSHOT_RANGES.labels(table, "done", _replica).set(ranges_done)
    m.SNAPSHOT_RANGES.labels(table, "total", _replica).set(ranges_total)


def snapshot_finished(
    *, table: str, destinations: Sequence[str], rows: int, seconds: float, state: str
) -> None:
    """A table's snapshot ended (finished, or failed and will be resumed)."""
    fields = {"table": table, "destinations": list(destinations), "rows": rows, "seconds": round(seconds, 1)}
    if state == "finished":
        log.info("snapshot finished", **fields)
    else:
        log.warning("snapshot stopped; it resumes from its last finished range", state=state, **fields)


def reconcile_finished(*, table: str, destination: str, counts: Mapping[str, int], seconds: float) -> None:
    """A scheduled reconciliation of one table with one destination ended (``reconcile_every``).
    Differences are logged at WARNING: the destination does not hold what the source does."""
    for result in ("equal", "missing", "extra", "different"):
        m.RECONCILE_ROWS.labels(table, destination, result, _replica).set(counts.get(result, 0))
    fields = {"table": table, "destination": destination, "seconds": round(seconds, 1), **counts}
    if any(counts.get(r, 0) for r in ("missing", "extra", "different")):
        log.warning("reconcile found differences (cdcd reconcile --repair fixes them)", **fields)
    else:
        log.info("reconcile: source and destination agree", **fields)
