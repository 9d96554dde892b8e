"""Flow machinery: how change events move from a reader to a destination, and when positions commit.

* ``pipeline``: ``Pipeline`` per (destination, stream group), ``PipelineConfig``; start here.
* ``contracts``: the Protocols it needs (source factory, sink, stages, telemetry hook) and the
  ``PipelineStatus`` snapshot for ``/status``.
* ``batcher``: ``BatchPolicy`` / ``Batcher`` (rows, bytes, max wait).
* ``watermark``: ``WatermarkTracker``: contiguous per-stream watermark, capped in-flight work.
* ``committer``: ``CommitPolicy`` / ``Committer`` (every N s or N events, and on drain).
* ``retry``: ``RetryPolicy`` (exponential backoff, full jitter), ``retry_call``, ``CircuitBreaker``.
* ``clock``: ``Clock``, ``SystemClock``, ``ManualClock`` (tests), ``wait_first``.
"""

from __future__ import annotations

from cdcd.flow.batcher import Batcher, BatchPolicy
from cdcd.flow.clock import Clock, ManualClock, SystemClock, wait_first
from cdcd.flow.committer import CommitPolicy, Committer
from cdcd.flow.contracts import (
    BatchSink,
    FlowEvents,
    NoFlowEvents,
    PipelineId,
    PipelineState,
    PipelineStatus,
    RejectionLike,
    SourceFactory,
    StageFn,
)
from cdcd.flow.pipeline import Pipeline, PipelineConfig, default_rejection_kind
from cdcd.flow.retry import CircuitBreaker, RetryPolicy, is_retriable, retry_call
from cdcd.flow.watermark import Ticket, WatermarkTracker

__all__ = [
    "BatchPolicy",
    "BatchSink",
    "Batcher",
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
