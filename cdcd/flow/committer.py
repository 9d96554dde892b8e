"""When and what to save: the pipeline's checkpoint policy (arroyo ``CommitPolicy``; R-41).

``Committer`` saves the tracker's contiguous watermark (only streams whose position moved since
the last save) when ``CommitPolicy`` says so: every ``every_s`` seconds or ``every_events``
resolved events, whichever comes first, and always on ``commit(force=True)`` (drain, shutdown).

A failed periodic save (Redis down: ``StateUnavailable``) is reported and retried later with
backoff; replication carries on, since writes are idempotent and a later save covers everything.
``LeaseLost`` and non-retriable errors propagate: the pipeline must stop.

Saves are serialized (one at a time per committer): besides the writer task, an operator may ask
for a save at any moment (``Pipeline.commit_now``, ``POST /admin/checkpoints/flush``), and two
overlapping saves could otherwise land in Redis out of order and move a checkpoint backwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec

from cdcd.events import Position
from cdcd.flow.clock import Clock
from cdcd.flow.contracts import FlowEvents, PipelineId
from cdcd.flow.retry import RetryPolicy, is_retriable
from cdcd.flow.watermark import WatermarkTracker
from cdcd.ops import tracing
from cdcd.state.checkpoints import GroupRef

__all__ = ["CheckpointSaver", "CommitPolicy", "Committer"]


class CommitPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How often applied positions are saved."""

    # Save at least this often (seconds) while positions move.
    every_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # Save once this many events were resolved since the last save.
    every_events: Annotated[int, msgspec.Meta(ge=1)] = 1000


class CheckpointSaver(Protocol):
    """The part of ``cdcd.state.CheckpointStore`` the committer uses."""

    async def save(self, dest: str, group: GroupRef, positions: dict[bytes, Position]) -> None: ...


class Committer:
    """Decides and performs checkpoint saves for one pipeline. The writer task drives it;
    ``commit()`` may also be called from other tasks (saves never overlap)."""

    def __init__(
        self,
        *,
        store: CheckpointSaver,
        destination: str,
        group: GroupRef,
        tracker: WatermarkTracker,
        policy: CommitPolicy,
        retry: RetryPolicy,
        clock: Clock,
        events: FlowEvents,
        pid: PipelineId,
        trace_parent: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        # the span context of the last read batch written (tracing): parent of the checkpoint span
        self.trace_parent = trace_parent
        self.destination = destination
        self.group = group
        self.tracker = tracker
        self.policy = policy
        self.retry = retry
        self.clock = clock
        self.events = events
        self.pid = pid
        self.saved: dict[bytes, Position] = tracker.committed()
        self.last_save: float | None = None
        self._since = clock.monotonic()
        self._resolved = 0
        self._failures = 0
        self._retry_at: float | None = None
        self._lock = asyncio.Lock()

    def note_resolved(self, count: int) -> None:
        """``count`` events were resolved (written, rejected or filtered)."""
        self._resolved += count

    def pending(self) -> dict[bytes, Position]:
        """Streams whose contiguous watermark moved since the last successful save."""
        return {s: p for s, p in self.tracker.committed().items() if self.saved.get(s) != p}

    def until_due(self) -> float | None:
        """Seconds until the next periodic save; None when nothing is pending."""
        if not self.pending():
            return None
        now = self.clock.monotonic()
        if self._retry_at is not None:
            return max(0.0, self._retry_at - now)
        if self._resolved >= self.policy.every_events:
            return 0.0
        return max(0.0, self._since + self.policy.every_s - now)

    async def maybe_commit(self) -> bool:
        """Save if due. True if a save happened. Retriable failures are swallowed (reported,
        retried after backoff); others propagate."""
        wait = self.until_due()
        if wait is None or wait > 0:
            return False
        try:
            return await self.commit()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            self._failures += 1
            self._retry_at = self.clock.monotonic() + self.retry.delay(self._failures)
            self.events.commit_failed(self.pid, exc)
            return False

    async def commit(self) -> bool:
        """Save pending positions now (errors propagate). True if anything was saved. Waits for a
        save already under way, then saves what is pending after it."""
        async with self._lock:
            todo = self.pending()
            if not todo:
                return False
            parent = self.trace_parent() if self.trace_parent is not None else None
            attrs = {"table": self.pid.table, "destination": self.destination, "group": self.pid.group,
                     "streams": len(todo)}  # fmt: skip
            with tracing.child_span("cdcd.checkpoint", [parent], attrs):
                await self.store.save(self.destination, self.group, todo)
            self.saved.update(todo)
            self.last_save = self._since = self.clock.monotonic()
            self._resolved = 0
            self._failures = 0
            self._retry_at = None
        self.events.committed(self.pid, todo)
        return True
