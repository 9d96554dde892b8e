"""What the pipeline needs from its neighbours, as structural Protocols, and what it reports.

The pipeline does not import sinks, stages or the reader: anything with the right shape fits.

* ``SourceFactory``: ``start -> AsyncIterator[EventBatch]`` (``GroupReader.read`` is one). Yields
  batches strictly after ``start`` per stream and ends when the group's generation is fully
  read; may raise retriable errors (the pipeline re-opens it from the last handed-on position).
* ``BatchSink``: ``await write(mapping, events) -> outcome`` with ``applied``/``skipped_stale``;
  one transaction; raises ``SinkUnavailable`` (retry all) or ``BadRows({index: reason})`` having
  committed nothing. ``cdcd.sinks.Sink`` satisfies it.
* ``StageFn``: see ``cdcd.stages`` (re-exported here).
* ``FlowEvents``: telemetry hook, called synchronously, must not block or raise;
  ``cdcd.ops`` implements it (metrics + logs). ``NoFlowEvents`` is the default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import msgspec

from cdcd.events import ChangeEvent, EventBatch, Position
from cdcd.stages import RejectionLike, StageFn, StageOutput

__all__ = [
    "BatchSink",
    "BranchMode",
    "FlowEvents",
    "NoFlowEvents",
    "PipelineId",
    "PipelineState",
    "PipelineStatus",
    "PositionSink",
    "RejectionLike",
    "SourceFactory",
    "StageFn",
    "StageOutput",
    "WriteOutcomeLike",
]

PipelineState = Literal[
    "starting",  # loading checkpoints
    "running",  # reading and writing normally
    "retrying",  # a write or state update failed and is being retried with backoff
    "circuit-open",  # the destination's circuit breaker is open; waiting for half-open
    "halted",  # a schema change halted the table (schema_changes = "halt"); waiting for resume
    "draining",  # close() called: writing what was read, then the final commit
    "done",  # the group's generation is closed and fully applied (checkpoint marked done)
    "closed",  # close() finished: drained and committed
    "terminated",  # terminate() or a close() deadline: abandoned, nothing more committed
    "failed",  # stopped by a non-retriable error (see last_error)
    "masking-unavailable",  # the token vault (or hash key) cannot be used: the table reads nothing more
    "queue-full",  # a validation/dead-letter queue is at [validation] max_entries: paused, nothing dropped
]

# How a destination branch gets its events (``cdcd.flow.branch``):
BranchMode = Literal[
    "shared",  # from the group's shared reader, read and decoded once for every destination
    "catching-up",  # detached: reads the log on its own from its own position, until it rejoins
]

SourceFactory = Callable[[Mapping[bytes, Position]], AsyncIterator[EventBatch]]


class WriteOutcomeLike(Protocol):
    @property
    def applied(self) -> int: ...

    @property
    def skipped_stale(self) -> int: ...


class BatchSink(Protocol):
    @property
    def name(self) -> str: ...

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> WriteOutcomeLike: ...


class PositionSink(Protocol):
    """A ``BatchSink`` with ``records_applied = True`` (``cdcd.flow.applied.RecordingSink``): its
    write also records the positions the events complete, atomically with them."""

    records_applied: bool

    async def write(
        self, mapping: Any, events: Sequence[ChangeEvent], positions: Mapping[bytes, Position] | None = None
    ) -> WriteOutcomeLike: ...


class PipelineId(msgspec.Struct, frozen=True, kw_only=True):
    """Labels of one pipeline (bounded cardinality: destinations x tables x groups)."""

    destination: str
    table: str
    group: str


class PipelineStatus(msgspec.Struct, kw_only=True):
    """Plain snapshot for ``/status``; JSON-encodable with ``msgspec.json``."""

    destination: str
    table: str
    group: str
    state: PipelineState
    positions: dict[str, str]  # stream id (hex) -> cdc$time of the applied contiguous watermark
    checkpoint: dict[str, str]  # stream id (hex) -> cdc$time last saved to the checkpoint store
    lag_seconds: float | None  # now - oldest applied watermark time over the streams (idle-proof)
    last_event_age_seconds: float | None  # now - write time of the newest applied event
    events_applied: int
    events_skipped_stale: int
    events_rejected: int
    events_dead_lettered: int
    write_retries: int
    queue_depth: int
    in_flight: int  # events read but not yet resolved
    last_commit_age_seconds: float | None
    last_error: str | None
    mode: BranchMode = "shared"


class FlowEvents(Protocol):
    """Telemetry of pipelines. Implementations log and count; they must not raise or block."""

    def batch_written(
        self, pid: PipelineId, events: Sequence[ChangeEvent], outcome: WriteOutcomeLike, seconds: float
    ) -> None: ...

    def write_failed(self, pid: PipelineId, error: BaseException, attempt: int, delay: float) -> None: ...

    def rejected(self, pid: PipelineId, stage: str, count: int) -> None: ...

    def dead_lettered(self, pid: PipelineId, count: int) -> None: ...

    def committed(self, pid: PipelineId, positions: Mapping[bytes, Position]) -> None: ...

    def commit_failed(self, pid: PipelineId, error: BaseException) -> None: ...

    def state_changed(self, pid: PipelineId, old: PipelineState, new: PipelineState) -> None: ...

    def mode_changed(self, pid: PipelineId, old: BranchMode, new: BranchMode, reason: str) -> None: ...

    def queued(self, pid: PipelineId, queue: str, reasons: Mapping[str, int]) -> None: ...

    def processed(self, pid: PipelineId, events: int) -> None: ...


class NoFlowEvents:
    """Default ``FlowEvents``: does nothing."""

    def batch_written(
        self, pid: PipelineId, events: Sequence[ChangeEvent], outcome: WriteOutcomeLike, seconds: float
    ) -> None:
        pass

    def write_failed(self, pid: PipelineId, error: BaseException, attempt: int, delay: float) -> None:
        pass

    def rejected(self, pid: PipelineId, stage: str, count: int) -> None:
        pass

    def dead_lettered(self, pid: PipelineId, count: int) -> None:
        pass

    def committed(self, pid: PipelineId, positions: Mapping[bytes, Position]) -> None:
        pass

    def commit_failed(self, pid: PipelineId, error: BaseException) -> None:
        pass

    def state_changed(self, pid: PipelineId, old: PipelineState, new: PipelineState) -> None:
        pass

    def mode_changed(self, pid: PipelineId, old: BranchMode, new: BranchMode, reason: str) -> None:
        pass

    def queued(self, pid: PipelineId, queue: str, reasons: Mapping[str, int]) -> None:
        """Entries added to a queue (validation, dead, stale), counted per reason (the rule)."""

    def processed(self, pid: PipelineId, events: int) -> None:
        """Events resolved by the branch (written, skipped or rejected): the rejected share's base."""
