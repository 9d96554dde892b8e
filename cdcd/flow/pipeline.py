"""One pipeline per (destination, stream group): read -> stages -> queue -> batch -> write -> commit.

Shape (style.md §7.4)::

    reader task                                   writer task
    source(start) -> stages -> tracker.track() -> queue.put()   queue.get() -> Batcher -> deliver()
                      (rejections ride along)     (blocks past   (bounded,    rejections -> validation queue
                                                   max_in_flight)  blocks)    events -> sink.write (retry,
                                                                                 breaker, BadRows -> DLQ)
                                                                              ticket.resolve() -> Committer

* Block, never drop: the reader waits on the watermark cap and on the bounded queue, so a slow
  or down destination stops this pipeline's reading only (R-13: each destination has its own).
* A checkpoint is the contiguous watermark: a batch's ``upto`` becomes committable only once the
  batch and every earlier one are resolved. Empty windows resolve at once, rejected and
  filtered events resolve once durably recorded (R-04, R-41).
* Sink errors: retriable ones (``SinkUnavailable``, timeouts) are retried forever with backoff
  behind the destination's circuit breaker (R-40). ``BadRows`` counts an attempt for each named
  row; rows out of attempts go to the dead-letter store, the rest are written again (the failed
  transaction committed nothing, so they are applied once) (R-23). Other errors stop the pipeline.
* Lifecycle: ``run()`` until the source ends (generation done: final commit + done marker) or
  ``close()``; ``close()`` stops reading, drains, commits, all under ``shutdown_timeout``;
  ``terminate()`` abandons at once and commits nothing more. ``LeaseLost`` from a save stops
  the pipeline without further commits and is raised from ``run()``. ``commit_now()`` saves the
  applied positions at once, outside the commit policy (operator checkpoint flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Annotated, Any

import msgspec

from cdcd.events import ChangeEvent, EventBatch, Position, timeuuid_to_micros
from cdcd.flow.batcher import Batcher, BatchPolicy
from cdcd.flow.clock import Clock, SystemClock, wait_first
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
    StageOutput,
)
from cdcd.flow.retry import CircuitBreaker, RetryPolicy, is_retriable
from cdcd.flow.watermark import Ticket, WatermarkTracker
from cdcd.flow.writer import SinkWriter
from cdcd.state.checkpoints import CheckpointStore, GroupRef
from cdcd.state.deadletter import DeadLetterStore, Kind

__all__ = ["Pipeline", "PipelineConfig", "default_rejection_kind"]

log = logging.getLogger(__name__)


class PipelineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tuning of one pipeline; every field has a safe default."""

    # Writer batches: rows, bytes, max wait.
    batch: BatchPolicy = BatchPolicy()
    # Backoff for sink writes and state updates; max_attempts bounds BadRows retries per row.
    retry: RetryPolicy = RetryPolicy()
    # Checkpoint cadence.
    commit: CommitPolicy = CommitPolicy()
    # Read batches buffered between reader and writer.
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 16
    # Events read but not yet resolved before the reader blocks (>= batch.max_rows advised).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    # Seconds one sink.write may take before it is cancelled and retried.
    write_timeout: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # Seconds close() may spend draining and committing before it abandons the rest.
    shutdown_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0


def default_rejection_kind(rejection: RejectionLike) -> Kind:
    """Staleness rejections go to the staleness audit, every other one to the validation queue."""
    return "stale" if rejection.stage == "staleness" else "validation"


class _Unit:
    """One read batch after the stages, on its way to the writer."""

    __slots__ = ("events", "nbytes", "rejections", "ticket")

    def __init__(self, events: list[ChangeEvent], rejections: list[RejectionLike], ticket: Ticket) -> None:
        self.events = events
        self.rejections = rejections
        self.ticket = ticket
        self.nbytes = sum(_approx_size(e) for e in events)


_size_encoder = msgspec.msgpack.Encoder(enc_hook=repr)


def _approx_size(event: ChangeEvent) -> int:
    """Rough encoded size of an event, for ``BatchPolicy.max_bytes``."""
    try:
        return len(_size_encoder.encode(event.values)) + 64
    except (TypeError, ValueError, OverflowError):
        return 64 + 32 * len(event.values)


_END = object()


class _Terminated(Exception):
    """terminate() was called while run() was still starting."""


def _split(out: StageOutput) -> tuple[Sequence[ChangeEvent], Sequence[RejectionLike]]:
    if isinstance(out, tuple):
        return out
    return out.passed, out.rejected


class Pipeline:
    """Replicates one stream group into one destination table. See the module docstring."""

    def __init__(
        self,
        *,
        destination: str,
        group: GroupRef,
        mapping: Any,
        source: SourceFactory,
        sink: BatchSink,
        checkpoints: CheckpointStore,
        deadletters: DeadLetterStore,
        breaker: CircuitBreaker | None = None,
        stages: Sequence[StageFn] = (),
        config: PipelineConfig | None = None,
        clock: Clock | None = None,
        events: FlowEvents | None = None,
        rejection_kind: Callable[[RejectionLike], Kind] = default_rejection_kind,
    ) -> None:
        self.destination = destination
        self.group = group
        self.mapping = mapping
        self.source = source
        self.sink = sink
        self.checkpoints = checkpoints
        self.deadletters = deadletters
        self.stages = tuple(stages)
        self.config = config or PipelineConfig()
        self.clock: Clock = clock or SystemClock()
        self.breaker = breaker or CircuitBreaker(self.clock)
        self.events: FlowEvents = events or NoFlowEvents()
        self.rejection_kind = rejection_kind
        self.pid = PipelineId(destination=destination, table=group.table, group=group.key)
        self.state: PipelineState = "starting"
        self._last_error: str | None = None
        self.rejected = 0
        self._queue: asyncio.Queue[_Unit | object] = asyncio.Queue(maxsize=self.config.queue_size)
        self._tracker = WatermarkTracker(max_in_flight=self.config.max_in_flight)
        self._committer: Committer | None = None
        self._batcher: Batcher[_Unit] = Batcher(
            self.config.batch, clock=self.clock, rows_of=lambda u: len(u.events), bytes_of=lambda u: u.nbytes
        )
        self._writer_policy = SinkWriter(
            sink=sink, mapping=mapping, destination=destination, breaker=self.breaker,
            retry=self.config.retry, write_timeout=self.config.write_timeout, clock=self.clock,
            events=self.events, pid=self.pid, set_state=self._writer_state,
            dead_letter=lambda entries: self._with_state_retry(lambda: self.deadletters.add(entries)),
        )  # fmt: skip
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._source_ended = False
        self._closing = False
        self._terminated = False
        self._finished = asyncio.Event()

    # -------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Replicate until the group is done, ``close()``/``terminate()`` is called, or a
        non-retriable error (raised here; ``LeaseLost`` included). Call once."""
        try:
            start = await self._with_state_retry(lambda: self.checkpoints.load(self.destination, self.group))
            if await self._with_state_retry(lambda: self.checkpoints.is_done(self.destination, self.group)):
                self._set_state("done")
                return
            self._tracker = WatermarkTracker(max_in_flight=self.config.max_in_flight, start=start)
            self._committer = Committer(
                store=self.checkpoints, destination=self.destination, group=self.group,
                tracker=self._tracker, policy=self.config.commit, retry=self.config.retry,
                clock=self.clock, events=self.events, pid=self.pid,
            )  # fmt: skip
            if self._closing or self._terminated:
                self._set_state("terminated" if self._terminated else "closed")
                return
            self._set_state("running")
            async with asyncio.TaskGroup() as tg:
                self._reader = tg.create_task(self._read_loop(start))
                self._writer = tg.create_task(self._write_loop())
        except BaseExceptionGroup as eg:
            # Surface the first real error as itself (LeaseLost, a bug...), not as a group.
            quiet = asyncio.CancelledError | _Terminated
            error = next((e for e in eg.exceptions if not isinstance(e, quiet)), None)
            self._fail(error)
            if error is None:
                return
            raise error from None
        except _Terminated:
            self._set_state("terminated")
            return
        except asyncio.CancelledError:
            self._set_state("terminated")
            raise
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self._finished.set()
        if self._terminated:
            self._set_state("terminated")
        elif self._source_ended and not self._closing:
            self._set_state("done")
        else:
            self._set_state("closed")

    async def close(self, deadline: float | None = None) -> None:
        """Stop reading, write everything already read, save the final checkpoint; all within
        ``deadline`` (default ``config.shutdown_timeout``) seconds, after which the rest is
        abandoned as by ``terminate()``. Returns when ``run()`` has finished."""
        if self._closing or self._finished.is_set():
            await self._finished.wait()
            return
        self._closing = True
        if self.state in ("running", "retrying", "circuit-open"):
            self._set_state("draining")
        budget = self.config.shutdown_timeout if deadline is None else deadline
        ok, _ = await wait_first(self.clock, self._drain(), budget)
        if not ok:
            log.warning("pipeline close deadline passed; abandoning the rest: %s", self.pid)
            self.terminate()
            await self._finished.wait()

    async def _drain(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._writer is not None and not self._writer.done():
            put = asyncio.ensure_future(self._queue.put(_END))
            finished = asyncio.ensure_future(self._finished.wait())
            try:
                await asyncio.wait({put, finished}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                put.cancel()
                finished.cancel()
        await self._finished.wait()

    def terminate(self) -> None:
        """Abandon at once: cancel reading and writing, commit nothing more."""
        self._terminated = True
        for task in (self._reader, self._writer):
            if task is not None and not task.done():
                task.cancel()
        if self._reader is None:  # run() has not started its tasks yet
            self._finished.set()

    async def commit_now(self) -> bool:
        """Save the applied positions (the contiguous watermark) now, without waiting for the
        commit policy (operator ``POST /admin/checkpoints/flush``). May be called from any task
        while ``run()`` is going on; it waits for a save already under way. Returns True if
        something was saved, False when nothing moved since the last save or the pipeline is
        not replicating (not started yet, finished, closing or terminated: those save on their
        own or, once terminated, never again). Raises what the save raises: ``StateUnavailable``
        (Redis down; the writer keeps its own schedule) or ``LeaseLost``."""
        committer = self._committer
        if committer is None or self._terminated or self._closing or self._finished.is_set():
            return False
        return await committer.commit()

    def status(self) -> PipelineStatus:
        """A plain snapshot for /status."""
        now = self.clock.time()
        stats = self._writer_policy.stats
        applied = self._tracker.committed()
        lag = None
        # A stream whose first change is still being written has no applied position yet: its
        # lag runs from that change (else a stuck destination would look caught up).
        waiting = [p for s, p in self._tracker.oldest_unresolved().items() if s not in applied]
        if applied or waiting:
            oldest = min(timeuuid_to_micros(p.time) for p in (*applied.values(), *waiting))
            lag = max(0.0, now - oldest / 1e6)
        saved = self._committer.saved if self._committer is not None else {}
        last_save = self._committer.last_save if self._committer is not None else None
        return PipelineStatus(
            destination=self.destination,
            table=self.group.table,
            group=self.group.key,
            state=self.state,
            positions={s.hex(): str(p.time) for s, p in applied.items()},
            checkpoint={s.hex(): str(p.time) for s, p in saved.items()},
            lag_seconds=lag,
            last_event_age_seconds=None if stats.last_event_us is None else now - stats.last_event_us / 1e6,
            events_applied=stats.applied,
            events_skipped_stale=stats.skipped_stale,
            events_rejected=self.rejected,
            events_dead_lettered=stats.dead_lettered,
            write_retries=stats.retries,
            queue_depth=self._queue.qsize(),
            in_flight=self._tracker.in_flight,
            last_commit_age_seconds=None if last_save is None else self.clock.monotonic() - last_save,
            last_error=self.last_error,
        )

    # ----------------------------------------------------------------------------------- reader

    async def _read_loop(self, start: Mapping[bytes, Position]) -> None:
        attempt = 0
        while True:
            it = self.source(start)
            try:
                async for batch in it:
                    attempt = 0
                    await self._admit(batch)
                break
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                attempt += 1
                delay = self.config.retry.delay(attempt)
                self.last_error = f"source: {exc}"
                log.warning("source read failed, re-opening: %s: %s", self.pid, exc)
                await self.clock.sleep(delay)
                start = self._tracker.last_tracked()
            finally:
                await _aclose(it)
        self._source_ended = True
        await self._queue.put(_END)

    async def _admit(self, batch: EventBatch) -> None:
        events: Sequence[ChangeEvent] = batch.events
        rejections: list[RejectionLike] = []
        for stage in self.stages:
            if not events:
                break
            passed, rejected = _split(stage(events))
            if len(passed) + len(rejected) != len(events):
                raise RuntimeError(
                    f"stage {stage!r} returned {len(passed)} passed + {len(rejected)} rejected "
                    f"for {len(events)} events; every event must land in exactly one"
                )
            events = passed
            rejections.extend(rejected)
        ticket = await self._tracker.track(batch.upto, weight=len(batch.events))
        if not events and not rejections:
            ticket.resolve()  # an empty window: committable as soon as what precedes it is
            return
        await self._queue.put(_Unit(list(events), rejections, ticket))

    # ----------------------------------------------------------------------------------- writer

    async def _write_loop(self) -> None:
        assert self._committer is not None
        committer = self._committer
        getter: asyncio.Task[Any] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(self._queue.get())
                wait = _min_opt(self._batcher.until_next(), committer.until_due())
                if wait is None:
                    await asyncio.wait({getter})
                elif wait > 0:
                    await wait_first(self.clock, asyncio.shield(getter), wait)
                item: object = None
                if getter.done():
                    item, getter = getter.result(), None
                if isinstance(item, _Unit):
                    self._batcher.add(item)
                if item is _END or self._batcher.until_next() == 0:
                    await self._deliver(self._batcher.flush())
                if item is _END:
                    break
                await committer.maybe_commit()
        finally:
            if getter is not None:
                getter.cancel()
        await self._with_state_retry(committer.commit)
        if self._source_ended and not self._closing:
            await self._with_state_retry(lambda: self.checkpoints.mark_done(self.destination, self.group))

    async def _deliver(self, units: list[_Unit]) -> None:
        rejections = [r for u in units for r in u.rejections]
        if rejections:
            await self._record_rejections(rejections)
        events = [e for u in units for e in u.events]
        rows = self.config.batch.max_rows
        for i in range(0, len(events), rows):
            await self._writer_policy.write(events[i : i + rows])
        resolved = 0
        for u in units:
            u.ticket.resolve()
            resolved += u.ticket.weight
        assert self._committer is not None
        self._committer.note_resolved(resolved)

    async def _record_rejections(self, rejections: list[RejectionLike]) -> None:
        now = self.clock.time()
        entries = [
            DeadLetterStore.make(
                self.rejection_kind(r),
                self.destination,
                r.event,
                reason=r.reason,
                stage=r.stage,
                attempts=0,
                first_failed_at=now,
            )
            for r in rejections
        ]
        await self._with_state_retry(lambda: self.deadletters.add(entries))
        self.rejected += len(rejections)
        by_stage: dict[str, int] = {}
        for r in rejections:
            by_stage[r.stage] = by_stage.get(r.stage, 0) + 1
        for stage, n in by_stage.items():
            self.events.rejected(self.pid, stage, n)

    # ---------------------------------------------------------------------------------- helpers

    async def _with_state_retry(self, fn: Callable[[], Any]) -> Any:
        """Await ``fn()`` until it succeeds; retriable errors (Redis down) are retried forever
        with backoff. ``close()``'s deadline bounds this during shutdown."""
        attempt = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                if self._terminated:  # terminate() before run() started its tasks
                    raise _Terminated from exc
                attempt += 1
                self.last_error = f"state: {exc}"
                log.warning("state update failed, retrying: %s: %s", self.pid, exc)
                previous = self.state
                self._set_state("retrying")
                await self.clock.sleep(self.config.retry.delay(attempt))
                self._set_state(previous)

    @property
    def last_error(self) -> str | None:
        return self._last_error or self._writer_policy.stats.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._last_error = value

    def _writer_state(self, new: PipelineState | None) -> None:
        if new is not None:
            self._set_state(new)
        elif self.state in ("retrying", "circuit-open"):
            self._set_state("draining" if self._closing else "running")

    def _set_state(self, new: PipelineState) -> None:
        old, self.state = self.state, new
        if old != new:
            self.events.state_changed(self.pid, old, new)

    def _fail(self, error: BaseException | None) -> None:
        if error is None:
            self._set_state("terminated")
            return
        self.last_error = f"{type(error).__name__}: {error}"
        self._set_state("failed")


def _min_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


async def _aclose(it: AsyncIterator[EventBatch]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
