"""Flow machinery: how change events move from the CDC log to the destinations, and when positions commit.

* ``reader``: ``SharedReader`` per (table, stream group): reads and decodes once, runs the shared
  stages, hands each batch to every attached branch; start here.
* ``branch``: ``Branch`` per destination: its stages, bounded buffer, writer, checkpoint;
  detaches when full, catches up on its own reader, rejoins. ``BranchConfig``.
* ``pipeline``: ``Pipeline``: a shared reader with one branch (embedding, tests).
* ``contracts``: the Protocols they need (source factory, sink, telemetry hook) and the
  ``PipelineStatus`` snapshot for ``/status``. Stages: ``cdcd.stages``.
* ``batcher``: ``BatchPolicy`` / ``Batcher`` (rows, bytes, max wait).
* ``watermark``: ``WatermarkTracker``: contiguous per-stream watermark, capped in-flight work.
* ``committer``: ``CommitPolicy`` / ``Committer`` (every N s or N events, and on drain).
* ``retry``: ``RetryPolicy`` (exponential backoff, full jitter), ``retry_call``, ``CircuitBreaker``.
* ``clock``: ``Clock``, ``SystemClock``, ``ManualClock`` (tests), ``wait_first``.
"""

from __future__ import annotations

from cdcd.flow.batcher import Batcher, BatchPolicy
from cdcd.flow.branch import Branch, BranchConfig, default_rejection_kind
from cdcd.flow.clock import Clock, ManualClock, SystemClock, wait_first
from cdcd.flow.committer import CommitPolicy, Committer
from cdcd.flow.contracts import (
    BatchSink,
    BranchMode,
    FlowEvents,
    NoFlowEvents,
    PipelineId,
    PipelineState,
    PipelineStatus,
    RejectionLike,
    SourceFactory,
    StageFn,
)
from cdcd.flow.pipeline import Pipeline, PipelineConfig
from cdcd.flow.reader import SharedReader
from cdcd.flow.retry import CircuitBreaker, RetryPolicy, is_retriable, retry_call
from cdcd.flow.watermark import Ticket, WatermarkTracker

__all__ = [
    "BatchPolicy",
    "BatchSink",
    "Batcher",
    "Branch",
    "BranchConfig",
    "BranchMode",
    "CircuitBreaker",
    "Clock",
    "CommitPolicy",
    "Committer",
    "FlowEvents",
    "ManualClock",
    "NoFlowEvents",
    "Pipeline",
    "PipelineConfig",
    "PipelineId",
    "PipelineState",
    "PipelineStatus",
    "RejectionLike",
    "RetryPolicy",
    "SharedReader",
    "SourceFactory",
    "StageFn",
    "SystemClock",
    "Ticket",
    "WatermarkTracker",
    "default_rejection_kind",
    "is_retriable",
    "retry_call",
    "wait_first",
]
