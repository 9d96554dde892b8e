"""Every Prometheus metric of cdcd, in one place, one comment each (arroyo ``metric_defs``).

All live in ``REGISTRY``, a dedicated ``CollectorRegistry`` (not the process-global default), which
``/metrics`` serves. Code does not touch these objects directly: ``cdcd.ops.emit`` functions log
and count together.

Labels have bounded cardinality: ``table`` (configured tables), ``destination`` (configured
destinations), ``replica`` (one value per process), ``operation`` (the ``OPERATIONS`` below),
``stage`` (receiving / processing / sending), ``reason`` and ``error_type`` (exception class names,
a small set). Stream ids and groups are never labels; per-group figures are folded (max lag, summed
queue depth) by ``PipelineCollector`` at scrape time.

Gauges that age (replication lag, checkpoint age) are computed at scrape time from the pipelines'
status snapshots, so a stalled pipeline shows a growing lag instead of a frozen one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdcd.ops.horizon import fold_lag, time_until_loss

__all__ = [
    "BATCH_SECONDS",
    "BUILD_INFO",
    "CDC_TTL",
    "CHECKPOINTS_SAVED",
    "CONFIG_RELOADS",
    "DEAD_LETTERS",
    "DEPENDENCY_UP",
    "DLQ_SIZE",
    "ERRORS",
    "EVENTS_APPLIED",
    "EVENTS_SKIPPED",
    "GENERATION_SWITCHES",
    "LEASES_HELD",
    "LEASE_CHANGES",
    "OPERATIONS",
    "REBALANCES",
    "RECONCILE_ROWS",
    "REGISTRY",
    "REJECTED",
    "REJECTED_ALERT",
    "REJECTED_SHARE",
    "REPLICATION_LATENCY",
    "RETRIES",
    "SNAPSHOT_RANGES",
    "SNAPSHOT_ROWS",
    "STATES",
    "PipelineCollector",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# Values of the ``operation`` label (cdcd.events.Op folded into what a destination applies).
OPERATIONS = ("insert", "update", "delete", "partition_delete", "range_delete", "other")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# cdcd version and this replica's name (value 1).
BUILD_INFO = Info("cdcd_build", "cdcd version and replica name", registry=REGISTRY)

# Change events a destination applied (committed in its transaction), by operation.
EVENTS_APPLIED = Counter(
    "cdcd_events_applied_total",
    "Change events applied to a destination",
    ["table", "destination", "operation", "replica"],
    registry=REGISTRY,
)

# Events intentionally not applied: reason = stale (older than the row), validation, staleness...
EVENTS_SKIPPED = Counter(
    "cdcd_events_skipped_total",
    "Change events intentionally not applied (stale, rejected by a stage)",
    ["table", "destination", "reason", "replica"],
    registry=REGISTRY,
)

# Errors by stage (receiving = Scylla, processing = stages/state, sending = destination).
ERRORS = Counter(
    "cdcd_errors_total",
    "Errors, retried or not",
    ["table", "destination", "stage", "error_type", "replica"],
    registry=REGISTRY,
)

# Failed writes that will be retried (after backoff).
RETRIES = Counter(
    "cdcd_write_retries_total",
    "Destination writes retried after a failure",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)

# Duration of one successful destination write (one transaction).
BATCH_SECONDS = Histogram(
    "cdcd_batch_write_seconds",
    "Duration of a successful destination batch write",
    ["table", "destination", "replica"],
    buckets=_WRITE_BUCKETS,
    registry=REGISTRY,
)

# End-to-end latency per event: destination commit time - source write time (R-61 p50/p95/p99).
REPLICATION_LATENCY = Histogram(
    "cdcd_replication_latency_seconds",
    "Source write to destination commit, per event",
    ["table", "destination", "replica"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Rows moved to the dead-letter store after their last attempt.
DEAD_LETTERS = Counter(
    "cdcd_dead_letters_total",
    "Events stored in the dead-letter store",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)

# Entries currently in a dead-letter queue (kind = dead, validation, stale), refreshed periodically.
DLQ_SIZE = Gauge(
    "cdcd_dlq_size",
    "Entries in the dead-letter store, validation queue and staleness audit",
    ["destination", "kind", "replica"],
    registry=REGISTRY,
)

# Events a destination's branch put in a queue (validation, dead, stale), by reason: the rule
# that refused it (not_null, max_length, check, destination, undecodable, ...; a small set).
REJECTED = Counter(
    "cdcd_rejected_events_total",
    "Events rejected into the validation queue, dead-letter queue or staleness audit",
    ["table", "destination", "queue", "reason", "replica"],
    registry=REGISTRY,
)
# Share of a table's events a destination rejected over the last 5 minutes (0..1).
REJECTED_SHARE = Gauge(
    "cdcd_rejected_share",
    "Share of events rejected over the last 5 minutes",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)
# 1 while that share is above [validation] alert_ratio (a warning is logged when it rises).
REJECTED_ALERT = Gauge(
    "cdcd_rejected_share_alert",
    "1 while the rejected share is above validation.alert_ratio",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)
# Checkpoints saved to Redis.
CHECKPOINTS_SAVED = Counter(
    "cdcd_checkpoints_saved_total",
    "Checkpoint saves",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)

# Stream groups finished because their generation closed, and the next generation started.
GENERATION_SWITCHES = Counter(
    "cdcd_generation_switches_total",
    "Generations fully applied and followed by their successor",
    ["table", "destination", "replica"],
    registry=REGISTRY,
)

# The CDC log TTL of a source table: alert when replication lag approaches it.
CDC_TTL = Gauge(
    "cdcd_cdc_log_ttl_seconds",
    "CDC log time-to-live of the source table (rows older than this are gone)",
    ["table", "replica"],
    registry=REGISTRY,
)

# 1 while a dependency (scylla, redis, destination:<name>) passed its last health check, else 0.
DEPENDENCY_UP = Gauge(
    "cdcd_dependency_up",
    "Result of the last health check of a dependency",
    ["dependency", "replica"],
    registry=REGISTRY,
)

# Destination branches detached from the shared reader (then reading on their own) and rejoined.
BRANCH_MODE_CHANGES = Counter(
    "cdcd_branch_mode_changes_total",
    "Destination branches switching between the shared reader and a catch-up reader of their own",
    ["table", "destination", "mode", "replica"],
    registry=REGISTRY,
)

# CDC log rows read by this replica (shared and catch-up readers): a fully shared group reads
# each row once, whatever the number of destinations.
LOG_ROWS_READ = Counter(
    "cdcd_log_rows_read_total",
    "CDC log rows read from Scylla",
    ["table", "replica"],
    registry=REGISTRY,
)

# Leases on (table, stream group) this replica holds now (cdcd.app.leases).
LEASES_HELD = Gauge(
    "cdcd_leases_held",
    "Stream group leases held by this replica",
    ["replica"],
    registry=REGISTRY,
)

# Leases taken, and leases lost (not renewed in time, or taken over) or released (hand-over).
LEASE_CHANGES = Counter(
    "cdcd_lease_changes_total",
    "Stream group leases acquired, released (hand-over, shutdown) or lost",
    ["change", "replica"],
    registry=REGISTRY,
)

# Rounds in which this replica handed groups over because it held more than its share.
REBALANCES = Counter(
    "cdcd_rebalances_total",
    "Rebalances: this replica handed groups over to get down to its share",
    ["replica"],
    registry=REGISTRY,
)

# Config reloads (SIGHUP, POST /admin/reload) by result: applied, unchanged, refused, failed.
CONFIG_RELOADS = Counter(
    "cdcd_config_reloads_total",
    "Configuration reloads by result",
    ["result", "replica"],
    registry=REGISTRY,
)

# Snapshot of a table (cdcd snapshot, or snapshot = "initial"): rows written in the current run,
# and token ranges done / in total (cdcd.snapshot.run.Progress).
SNAPSHOT_ROWS = Gauge(
    "cdcd_snapshot_rows",
    "Rows a table's running or last snapshot has copied in this process",
    ["table", "replica"],
    registry=REGISTRY,
)
SNAPSHOT_RANGES = Gauge(
    "cdcd_snapshot_ranges",
    "Token ranges of a table's snapshot: done and total",
    ["table", "state", "replica"],
    registry=REGISTRY,
)

# Rows of the last scheduled reconciliation of a table with a destination (reconcile_every),
# by result: equal, missing, extra, different.
RECONCILE_ROWS = Gauge(
    "cdcd_reconcile_rows",
    "Rows of the last reconciliation of a table with a destination, by result",
    ["table", "destination", "result", "replica"],
    registry=REGISTRY,
)

# Pipeline states counted by PipelineCollector (cdcd.flow.PipelineState values).
STATES = (
    "starting",
    "running",
    "retrying",
    "circuit-open",
    "halted",
    "draining",
    "done",
    "closed",
    "terminated",
    "failed",
    "masking-unavailable",
    "queue-full",
)


class PipelineCollector(Collector):
    """Scrape-time gauges from pipeline status snapshots (``cdcd.flow.PipelineStatus``).

    ``snapshot`` returns the current statuses; each needs ``table``, ``destination``, ``state``,
    ``lag_seconds``, ``queue_depth``, ``in_flight`` and ``last_commit_age_seconds``.
    """

    def __init__(
        self,
        snapshot: Callable[[], Iterable[Any]],
        replica: Callable[[], str],
        ttls: Callable[[], Mapping[str, int]] | None = None,
        *,
        stored_lags: Callable[[], Mapping[tuple[str, str], float]] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.replica = replica
        self.ttls = ttls  # source table -> CDC log TTL in seconds (for time until data loss)
        # (table, destination) -> lag estimated from checkpoints while no pipeline runs
        self.stored_lags = stored_lags

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        replica = self.replica()
        labels = ["table", "destination", "replica"]
        # now - oldest applied position over the table's streams (max over its groups), R-61.
        lag = GaugeMetricFamily("cdcd_replication_lag_seconds", "Replication lag", labels=labels)
        # seconds since the oldest of the table's last checkpoint saves.
        age = GaugeMetricFamily("cdcd_checkpoint_age_seconds", "Age of the last checkpoint", labels=labels)
        # read batches waiting for the writer (summed over groups); alert when it stays high.
        depth = GaugeMetricFamily("cdcd_queue_depth", "Batches queued for the writer", labels=labels)
        # events read and not yet resolved (summed over groups).
        inflight = GaugeMetricFamily("cdcd_in_flight_events", "Events read, not yet resolved", labels=labels)
        # stream-group pipelines by state.
        groups = GaugeMetricFamily(
            "cdcd_pipelines", "Stream-group pipelines by state", labels=[*labels[:2], "state", "replica"]
        )
        # stream-group branches by mode: shared (fed by the shared reader) or catching-up.
        modes = GaugeMetricFamily(
            "cdcd_branches", "Destination branches by mode", labels=[*labels[:2], "mode", "replica"]
        )
        # CDC log TTL minus the lag; no series for tables whose log never expires.
        horizon = GaugeMetricFamily(
            "cdcd_time_until_data_loss_seconds",
            "CDC log TTL minus replication lag: time before unapplied changes expire",
            labels=labels,
        )
        ttls = self.ttls() if self.ttls is not None else {}
        statuses = list(self.snapshot())
        lags = fold_lag(statuses, self.stored_lags() if self.stored_lags is not None else None)
        folded: dict[tuple[str, str], dict[str, float]] = {
            key: {"age": -1.0, "depth": 0.0, "inflight": 0.0} for key in lags
        }
        counts: dict[tuple[str, str, str], int] = {}
        by_mode: dict[tuple[str, str, str], int] = {}
        for st in statuses:
            if st.state not in ("done", "closed", "terminated", "failed"):
                mk = (st.table, st.destination, getattr(st, "mode", "shared"))
                by_mode[mk] = by_mode.get(mk, 0) + 1
            key = (st.table, st.destination)
            f = folded.setdefault(key, {"age": -1.0, "depth": 0.0, "inflight": 0.0})
            if st.state not in ("done", "closed", "terminated") and st.last_commit_age_seconds is not None:
                f["age"] = max(f["age"], st.last_commit_age_seconds)
            f["depth"] += st.queue_depth
            f["inflight"] += st.in_flight
            counts[(st.table, st.destination, st.state)] = (
                counts.get((st.table, st.destination, st.state), 0) + 1
            )
        for (table, dest), f in sorted(folded.items()):
            if (table, dest) in lags:
                lag.add_metric([table, dest, replica], lags[(table, dest)])
                remaining = time_until_loss(ttls.get(table, 0), lags[(table, dest)])
                if remaining is not None:
                    horizon.add_metric([table, dest, replica], remaining)
            if f["age"] >= 0:
                age.add_metric([table, dest, replica], f["age"])
            depth.add_metric([table, dest, replica], f["depth"])
            inflight.add_metric([table, dest, replica], f["inflight"])
        for (table, dest, state), n in sorted(counts.items()):
            groups.add_metric([table, dest, state, replica], n)
        for (table, dest, mode), n in sorted(by_mode.items()):
            modes.add_metric([table, dest, mode, replica], n)
        yield from (lag, age, depth, inflight, groups, modes, horizon)
