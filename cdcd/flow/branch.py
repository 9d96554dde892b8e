"""``Branch``: one destination of one stream group: its stages -> bounded buffer -> batch -> write -> commit.

Shape (style.md §7.4)::

    SharedReader ─offer()─┐                          writer task
                          ├─> stages -> tracker -> buffer -> Batcher -> deliver() -> Committer
    catch-up reader ──────┘   (own)     (capped)  (bounded)            rejections -> validation queue
    (only while detached)                                              events -> sink.write (retry,
                                                                         breaker, BadRows -> DLQ)

* **Modes.** ``shared``: batches come from the group's ``SharedReader`` (read and decoded once for
  every destination). ``catching-up``: the branch was *detached* (its buffer stayed full while
  another destination waited for input, or it joined late or far behind) and reads the log on its
  own cursor, from exactly the last position it was handed, through a catch-up source and the same
  shared stages; after each batch it asks the shared reader to *rejoin*, which succeeds once its
  position has reached the shared reader's on every stream. Batches it already had are then
  dropped per stream (``_ahead``), so nothing is applied twice and nothing is skipped.
* **Block, never drop.** The buffer and the tracker's in-flight cap bound memory in both modes;
  the catch-up reader blocks on them, the shared reader waits on them only as long as the branch
  does not hold back another one (``offer``).
* **Checkpoints** are this destination's own: the contiguous watermark of resolved batches
  (written, rejected or filtered), saved by the ``Committer``; a kill -9 at any moment loses
  nothing and applies nothing twice (writes are idempotent, checkpoints never pass unresolved work).
  A sink with ``records_applied`` (``cdcd.flow.applied.RecordingSink``) is handed, with each chunk
  it writes, the positions that chunk completes (``completed_positions``), recorded with the data;
  the checkpoint store is then ``DestinationCheckpoints`` (Redis and the destination).
* **Sink errors** (``SinkWriter``): retriable ones are retried forever behind the destination's
  circuit breaker; ``BadRows`` rows go to the dead-letter store after ``max_attempts``; others stop
  the branch (raised from ``run()``).
* **Lifecycle.** ``run(shared)`` until the group is done (the generation is closed and applied:
  final commit + done marker), ``close()`` (stop taking input, drain, commit, within
  ``shutdown_timeout``) or ``terminate()`` (abandon, commit nothing more). ``LeaseLost`` from a
  save stops the branch and is raised from ``run()``. ``commit_now()`` saves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from cdcd.events import ChangeEvent, EventBatch, Position, timeuuid_to_micros
from cdcd.flow.applied import DestinationCheckpoints
from cdcd.flow.batcher import Batcher, BatchPolicy
from cdcd.flow.clock import Clock, SystemClock, wait_first
from cdcd.flow.committer import CommitPolicy, Committer
from cdcd.flow.contracts import (
    BatchSink,
    BranchMode,
    FlowEvents,
    NoFlowEvents,
    PipelineId,
    PipelineState,
    PipelineStatus,
    SourceFactory,
)
from cdcd.flow.retry import CircuitBreaker, RetryPolicy, is_retriable
from cdcd.flow.watermark import Ticket, WatermarkTracker
from cdcd.flow.writer import SinkWriter
from cdcd.ops import tracing
from cdcd.ops.correlation import batch_fields
from cdcd.ops.logging import correlation
from cdcd.stages import Chain, RejectionLike, Stage, StageFn
from cdcd.state.checkpoints import CheckpointStore, GroupRef
from cdcd.state.deadletter import DeadLetter, DeadLetterStore, Kind

if TYPE_CHECKING:
    from cdcd.flow.reader import SharedReader

__all__ = ["Branch", "BranchConfig", "default_rejection_kind"]

log = logging.getLogger(__name__)


class BranchConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tuning of one destination branch; every field has a safe default."""

    # Writer batches: rows, bytes, max wait.
    batch: BatchPolicy = BatchPolicy()
    # Backoff for sink writes and state updates; max_attempts bounds BadRows retries per row.
    retry: RetryPolicy = RetryPolicy()
    # Checkpoint cadence.
    commit: CommitPolicy = CommitPolicy()
    # Read batches buffered between the reader and the writer.
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 16
    # Events read but not yet resolved before the branch takes no more (>= batch.max_rows advised).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    # Seconds one sink.write may take before it is cancelled and retried.
    write_timeout: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # Seconds close() may spend draining and committing before it abandons the rest.
    shutdown_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Entries per destination and queue ([validation] max_entries); at the limit the branch pauses
    # in state "queue-full" until there is room (None: unbounded).
    max_queue_entries: Annotated[int, msgspec.Meta(ge=1)] | None = None


def default_rejection_kind(rejection: RejectionLike) -> Kind:
    """Staleness rejections go to the staleness audit, every other one to the validation queue."""
    return "stale" if rejection.stage == "staleness" else "validation"


class _Unit:
    """One read batch after the stages, on its way to the writer."""

    __slots__ = ("events", "nbytes", "rejections", "ticket", "trace", "upto")

    def __init__(
        self,
        events: list[ChangeEvent],
        rejections: list[RejectionLike],
        ticket: Ticket,
        upto: Mapping[bytes, Position] | None = None,
        trace: Any = None,
    ) -> None:
        self.events = events
        self.rejections = rejections
        self.ticket = ticket
        self.upto = upto  # positions this batch completes (recorded with its write)
        self.trace = trace  # the read batch's span context (tracing on), parent of its write span
        self.nbytes = _approx_size(events)


_size_encoder = msgspec.msgpack.Encoder(enc_hook=repr)


def _approx_size(events: list[ChangeEvent]) -> int:
    """Rough encoded size of a read batch, for ``BatchPolicy.max_bytes``: the msgpack size of
    every event's values plus 64 bytes per event, with ONE encode call per batch (one per event
    only when the batch holds a value that cannot be encoded)."""
    if not events:
        return 0
    try:
        return len(_size_encoder.encode([e.values for e in events])) + 64 * len(events)
    except (TypeError, ValueError, OverflowError):
        return sum(_approx_event_size(e) for e in events)


def _approx_event_size(event: ChangeEvent) -> int:
    try:
        return len(_size_encoder.encode(event.values)) + 64
    except (TypeError, ValueError, OverflowError):
        return 64 + 32 * len(event.values)


_END = object()


class _Terminated(Exception):
    """terminate() was called while run() was still starting."""


class _Buffer:
    """Bounded FIFO between the branch's input (shared or catch-up) and its writer."""

    __slots__ = ("_items", "_not_empty", "_room", "maxsize")

    def __init__(self, maxsize: int, room: asyncio.Event) -> None:
        self.maxsize = maxsize
        self._items: deque[object] = deque()
        self._not_empty = asyncio.Event()
        self._room = room  # set whenever an item is taken (shared with the tracker's resolutions)

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: object) -> None:
        self._items.append(item)
        self._not_empty.set()

    async def get(self) -> object:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        self._room.set()
        return item


class Branch:
    """Replicates one stream group into one destination table. See the module docstring."""

    def __init__(
        self,
        *,
        destination: str,
        group: GroupRef,
        mapping: Any,
        sink: BatchSink,
        checkpoints: CheckpointStore | DestinationCheckpoints,
        deadletters: DeadLetterStore,
        breaker: CircuitBreaker | None = None,
        stages: Sequence[StageFn | Stage] = (),
        config: BranchConfig | Any = None,
        clock: Clock | None = None,
        events: FlowEvents | None = None,
        rejection_kind: Callable[[RejectionLike], Kind] = default_rejection_kind,
        catch_up: SourceFactory | None = None,
        floor_time: uuid.UUID | None = None,
        gate: Any = None,
    ) -> None:
        self.destination = destination
        self.group = group
        self.mapping = mapping
        self.sink = sink
        self._records = bool(getattr(sink, "records_applied", False))  # hand positions to writes
        self.checkpoints = checkpoints
        self.deadletters = deadletters
        self.stages = Chain(stages)
        self.config = config or BranchConfig()
        self.clock: Clock = clock or SystemClock()
        self.breaker = breaker or CircuitBreaker(self.clock)
        self.events: FlowEvents = events or NoFlowEvents()
        self.rejection_kind = rejection_kind
        self.catch_up = catch_up  # opens a reader of its own while detached (None: never detaches)
        self.floor_time = floor_time  # where streams without a checkpoint start (None: the reader's)
        self.gate = gate  # schema changes (cdcd.schema_watch.SchemaGate): admit(events) before writes
        self.pid = PipelineId(destination=destination, table=group.table, group=group.key)
        self._last_trace: Any = None  # span context of the last read batch written (tracing)
        self.state: PipelineState = "starting"
        self.mode: BranchMode = "shared"
        self.rejected = 0
        self._last_error: str | None = None
        self._room = asyncio.Event()
        self._buffer = _Buffer(self.config.queue_size, self._room)
        self._tracker = WatermarkTracker(max_in_flight=self.config.max_in_flight)
        self._committer: Committer | None = None
        self._batcher: Batcher[_Unit] = Batcher(
            self.config.batch, clock=self.clock, rows_of=lambda u: len(u.events), bytes_of=lambda u: u.nbytes
        )
        self._writer_policy = SinkWriter(
            sink=sink, mapping=mapping, destination=destination, breaker=self.breaker,
            retry=self.config.retry, write_timeout=self.config.write_timeout, clock=self.clock,
            events=self.events, pid=self.pid, set_state=self._writer_state,
            dead_letter=self._queue,
        )  # fmt: skip
        self._shared: SharedReader | None = None
        # Per stream, the last position this branch was handed (start included): where a catch-up
        # reader resumes, and what the shared reader's batches are compared with.
        self._seen: dict[bytes, Position] = {}
        self._ahead: set[bytes] = set()  # streams where _seen may be past the shared reader
        self._wake = asyncio.Event()  # input loop: mode changed, source ended, shared failure
        self._shared_error: BaseException | None = None
        self._input: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._source_ended = False
        self._closing = False
        self._terminated = False
        self._finished = asyncio.Event()

    # -------------------------------------------------------------------------------- lifecycle

    async def run(self, shared: SharedReader) -> None:
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
                clock=self.clock, events=self.events, pid=self.pid, trace_parent=lambda: self._last_trace,
            )  # fmt: skip
            if self._closing or self._terminated:
                self._set_state("terminated" if self._terminated else "closed")
                return
            self._seen = dict(start)
            if self.floor_time is not None:
                for s in self.group.streams:
                    if s not in self._seen:
                        self._seen[s] = Position(
                            generation=self.group.generation, stream_id=s, time=self.floor_time
                        )
            self._set_state("running")
            self._shared = shared
            shared.join(self)
            async with asyncio.TaskGroup() as tg:
                self._input = tg.create_task(self._input_loop())
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
            shared.leave(self)
            self._finished.set()
        if self._terminated:
            self._set_state("terminated")
        elif self._source_ended and not self._closing:
            self._set_state("done")
        else:
            self._set_state("closed")

    async def close(self, deadline: float | None = None) -> None:
        """Stop taking input, write everything already taken, save the final checkpoint; all
        within ``deadline`` (default ``config.shutdown_timeout``) seconds, after which the rest is
        abandoned as by ``terminate()``. Returns when ``run()`` has finished."""
        if self._closing or self._finished.is_set():
            await self._finished.wait()
            return
        self._closing = True
        if self._shared is not None:
            self._shared.leave(self)
        if self.state in ("running", "retrying", "circuit-open", "queue-full"):
            self._set_state("draining")
        budget = self.config.shutdown_timeout if deadline is None else deadline
        ok, _ = await wait_first(self.clock, self._drain(), budget)
        if not ok:
            log.warning("branch close deadline passed; abandoning the rest: %s", self.pid)
            self.terminate()
            await self._finished.wait()

    async def _drain(self) -> None:
        if self._input is not None and not self._input.done():
            self._input.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._input
        if self._writer is not None and not self._writer.done():
            put = asyncio.ensure_future(self._put_end())
            finished = asyncio.ensure_future(self._finished.wait())
            try:
                await asyncio.wait({put, finished}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                put.cancel()
                finished.cancel()
        await self._finished.wait()

    def terminate(self) -> None:
        """Abandon at once: cancel input and writing, commit nothing more."""
        self._terminated = True
        if self._shared is not None:
            self._shared.leave(self)
        for task in (self._input, self._writer):
            if task is not None and not task.done():
                task.cancel()
        if self._input is None:  # run() has not started its tasks yet
            self._finished.set()

    @property
    def taking_input(self) -> bool:
        """Still accepts batches (not closing, terminated or finished)."""
        return not (self._closing or self._terminated or self._finished.is_set())

    async def commit_now(self) -> bool:
        """Save the applied positions (the contiguous watermark) now, without waiting for the
        commit policy (operator ``POST /admin/checkpoints/flush``). May be called from any task
        while ``run()`` is going on; it waits for a save already under way. Returns True if
        something was saved, False when nothing moved since the last save or the branch is not
        replicating. Raises what the save raises: ``StateUnavailable`` or ``LeaseLost``."""
        committer = self._committer
        if committer is None or not self.taking_input:
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
            mode=self.mode,
            positions={s.hex(): str(p.time) for s, p in applied.items()},
            checkpoint={s.hex(): str(p.time) for s, p in saved.items()},
            lag_seconds=lag,
            last_event_age_seconds=None if stats.last_event_us is None else now - stats.last_event_us / 1e6,
            events_applied=stats.applied,
            events_skipped_stale=stats.skipped_stale,
            events_rejected=self.rejected + stats.rejected,
            events_dead_lettered=stats.dead_lettered,
            write_retries=stats.retries,
            queue_depth=len(self._buffer),
            in_flight=self._tracker.in_flight,
            last_commit_age_seconds=None if last_save is None else self.clock.monotonic() - last_save,
            last_error=self.last_error,
        )

    # --------------------------------------------------------- called by the shared reader

    @property
    def seen(self) -> Mapping[bytes, Position]:
        """Per stream, the last position handed to this branch (its start included)."""
        return self._seen

    def hungry(self) -> bool:
        """Nothing buffered: the writer waits for input (or writes its last batch)."""
        return not self._buffer

    def keeping_up(self) -> bool:
        """The writer keeps up with the input: the buffer is at most half full."""
        return len(self._buffer) * 2 <= self._buffer.maxsize

    def has_room(self, weight: int) -> bool:
        return not self._buffer.full() and self._tracker.has_room(weight)

    def set_mode(
        self, mode: BranchMode, reason: str, *, ahead: Mapping[bytes, Position] | None = None
    ) -> None:
        """Switch between ``shared`` and ``catching-up`` (the shared reader decides). On rejoin,
        ``ahead`` is the shared reader's position: streams where this branch is past it drop
        what they already had."""
        if ahead is not None:
            self._ahead = {
                s for s, p in self._seen.items() if s in ahead and p.sort_key() > ahead[s].sort_key()
            }
        if mode == self.mode:
            return
        old, self.mode = self.mode, mode
        self.events.mode_changed(self.pid, old, mode, reason)
        self._wake.set()

    def source_ended(self) -> None:
        """The shared reader read the whole generation: nothing more will come."""
        self._source_ended = True
        self._wake.set()

    def shared_failed(self, error: BaseException) -> None:
        """The shared reader stopped on a non-retriable error: this branch stops with it."""
        self._shared_error = error
        self._wake.set()

    async def offer(
        self,
        events: Sequence[ChangeEvent],
        rejections: Sequence[RejectionLike],
        upto: Mapping[bytes, Position],
        weight: int,
        *,
        detach_after: float | None,
        others_waiting: Callable[[], bool],
    ) -> bool:
        """Take one batch from the shared reader. Waits for room in the buffer; once
        ``detach_after`` seconds have passed and ``others_waiting()`` (another branch has
        nothing to write), gives up and returns False: the shared reader detaches the branch,
        which then reads this batch itself. Also False when the branch stopped taking input."""
        if self.mode != "shared" or not self.taking_input:
            return False
        prepared = self._prepare(events, rejections, upto)
        if prepared is None:
            return True
        waited = 0.0
        while not self.has_room(weight):
            if self.mode != "shared" or not self.taking_input:
                return False
            if detach_after is not None and waited >= detach_after and others_waiting():
                return False
            step = 0.2 if detach_after is None or waited >= detach_after else detach_after - waited
            started = self.clock.monotonic()
            self._room.clear()
            if detach_after is None:
                await self._room.wait()
            else:
                await wait_first(self.clock, self._room.wait(), step)
            waited += self.clock.monotonic() - started
        self._take(*prepared, weight)
        return True

    # ------------------------------------------------------------------------------------ input

    async def _input_loop(self) -> None:
        while True:
            if self._shared_error is not None:
                raise self._shared_error
            if self.mode == "shared":
                if self._source_ended:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._catch_up():
                self._source_ended = True
                break
        await self._put_end()

    async def _put_end(self) -> None:
        """Queue the writer's end marker behind what is buffered (waits for room)."""
        await self._until(lambda: not self._buffer.full())
        self._buffer.put_nowait(_END)

    async def _catch_up(self) -> bool:
        """Read on this branch's own cursor until it rejoins the shared reader (False) or the
        generation is fully read (True)."""
        assert self._shared is not None and self.catch_up is not None
        shared = self._shared
        attempt = 0
        while True:
            it = self.catch_up(dict(self._seen))
            try:
                async for batch in it:
                    attempt = 0
                    with tracing.in_batch(batch.trace):
                        observe = tracing.stage_observer(
                            batch.trace, table=self.pid.table, group=self.pid.group
                        )
                        passed, rejected = shared.common.run(batch.events, observe)
                        await shared.common.settle()
                        await self._admit(passed, rejected, batch)
                    if shared.reached(self):
                        await self._until(self.keeping_up)  # rejoin with room to spare, not to detach again
                        if shared.try_rejoin(self):
                            return False
                return True
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                attempt += 1
                self.last_error = f"source: {exc}"
                log.warning("catch-up read failed, re-opening: %s: %s", self.pid, exc)
                await self.clock.sleep(self.config.retry.delay(attempt))
            finally:
                await aclose(it)

    async def _admit(
        self, events: Sequence[ChangeEvent], rejections: Sequence[RejectionLike], batch: EventBatch
    ) -> None:
        """Take a batch of the catch-up reader: blocks on the in-flight cap and the buffer."""
        prepared = self._prepare(events, rejections, batch.upto)
        if prepared is None:
            return
        weight = len(batch.events)
        await self._until(lambda: self.has_room(weight))
        self._take(*prepared, weight)

    def _prepare(
        self,
        events: Sequence[ChangeEvent],
        rejections: Sequence[RejectionLike],
        upto: Mapping[bytes, Position],
    ) -> tuple[Sequence[ChangeEvent], Sequence[RejectionLike], Mapping[bytes, Position]] | None:
        """What is new to this branch of a batch, after its own stages; None when nothing is."""
        events, rejections, upto = self._unseen(events, rejections, upto)
        if not upto:
            return None
        observe = tracing.stage_observer(
            tracing.batch_trace(), table=self.pid.table, destination=self.destination, group=self.pid.group
        )
        passed, rejected = self.stages.run(events, observe)
        return passed, [*rejections, *rejected] if rejected else rejections, upto

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked whenever the buffer or the in-flight
        work shrinks."""
        while not condition():
            self._room.clear()
            await self._room.wait()

    def _take(
        self,
        events: Sequence[ChangeEvent],
        rejections: Sequence[RejectionLike],
        upto: Mapping[bytes, Position],
        weight: int,
    ) -> None:
        ticket = self._tracker.track_nowait(upto, weight)
        self._seen.update(upto)
        if not events and not rejections:
            ticket.resolve()  # an empty window: committable as soon as what precedes it is
            self._room.set()
            return
        self._buffer.put_nowait(_Unit(list(events), list(rejections), ticket, upto, tracing.batch_trace()))

    def _unseen(
        self,
        events: Sequence[ChangeEvent],
        rejections: Sequence[RejectionLike],
        upto: Mapping[bytes, Position],
    ) -> tuple[Sequence[ChangeEvent], Sequence[RejectionLike], Mapping[bytes, Position]]:
        """Drop what this branch was already handed (streams in ``_ahead``: it caught up past
        the shared reader there). Everything else passes untouched."""
        if not self._ahead:
            return events, rejections, upto
        keep: dict[bytes, Position] = {}
        cut: dict[bytes, tuple[int, int]] = {}
        for s, p in upto.items():
            if s not in self._ahead:
                keep[s] = p
                continue
            mine = self._seen[s].sort_key()
            cut[s] = mine
            if p.sort_key() > mine:
                keep[s] = p
                self._ahead.discard(s)  # the shared reader is past this branch there from now on

        def fresh(e: ChangeEvent) -> bool:
            limit = cut.get(e.pos.stream_id)
            return limit is None or e.pos.sort_key() > limit

        return [e for e in events if fresh(e)], [r for r in rejections if fresh(r.event)], keep

    # ----------------------------------------------------------------------------------- writer

    async def _write_loop(self) -> None:
        assert self._committer is not None
        committer = self._committer
        getter: asyncio.Task[Any] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(self._buffer.get())
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
            with correlation([r.event for r in rejections]):
                await self._record_rejections(rejections)
        events = [e for u in units for e in u.events]
        rows = self.config.batch.max_rows
        marks = completed_positions(units, rows) if self._records else None
        traces = [u.trace for u in units for _ in u.events] if tracing.active() else []
        # schema changes (cdcd.schema_watch.SchemaGate): alter the target, leave columns out, or
        # halt; its parts keep one event per input, so chunks and marks stay those of ``events``
        parts = self.gate.admit(events, self._set_state) if self.gate is not None else _whole(events)
        base = 0
        async for part in parts:
            if part.rejections:
                with correlation([r.event for r in part.rejections]):
                    await self._record_rejections(part.rejections)
            pe, j = part.events, 0
            while j < len(pe):
                i = base + j
                n = i // rows
                end = min(len(pe), (n + 1) * rows - base)
                chunk = pe[j:end]
                done = base + end == min((n + 1) * rows, len(events))  # this write completes chunk n
                attrs = {"table": self.pid.table, "destination": self.destination, "group": self.pid.group,
                         "rows": len(chunk), **batch_fields(chunk)}  # fmt: skip
                with (
                    correlation(chunk),
                    tracing.child_span("cdcd.write", traces[i : i + len(chunk)], attrs) as span,
                ):
                    await self._writer_policy.write(chunk, None if marks is None or not done else marks[n])
                    if span is not None:
                        span.set_attribute("outcome", "written")
                j = end
            base += len(pe)
        if base != len(events):
            raise RuntimeError(f"schema gate returned {base} events for {len(events)}")
        if traces:
            self._last_trace = traces[-1]
        self.events.processed(self.pid, len(events) + len(rejections))
        resolved = 0
        for u in units:
            u.ticket.resolve()
            resolved += u.ticket.weight
        self._room.set()
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
                columns=getattr(r, "columns", ()),
                rule=getattr(r, "rule", "") or r.stage,
            )
            for r in rejections
        ]
        await self._queue(entries)
        self.rejected += len(rejections)
        by_stage: dict[str, int] = {}
        for r in rejections:
            label = getattr(r, "label", r.stage)  # e.g. staleness: "too_old"
            by_stage[label] = by_stage.get(label, 0) + 1
        for stage, n in by_stage.items():
            self.events.rejected(self.pid, stage, n)

    async def _queue(self, entries: list[DeadLetter]) -> None:
        """Store entries in their queues (validation, dead, stale); while a queue is at
        ``max_queue_entries`` the branch waits in state ``queue-full`` (nothing is dropped)."""
        limit = self.config.max_queue_entries
        kinds: dict[Kind, list[DeadLetter]] = {}
        for e in entries:
            kinds.setdefault(e.kind, []).append(e)
        if limit is not None:
            for kind in kinds:
                attempt = 0
                while True:
                    size = await self._with_state_retry(
                        functools.partial(self.deadletters.count, kind, self.destination)
                    )
                    if size < limit or self._terminated:  # (a batch may overshoot the limit)
                        break
                    attempt += 1
                    if attempt == 1:
                        previous = self.state
                        self._set_state("queue-full")
                        self.last_error = (
                            f"{kind} queue of {self.destination} is full ({size} of {limit} entries)"
                        )
                        log.error("queue full: %s: %s queue holds %d of %d entries; paused until entries are "
                                  "retried or dropped (cdcd dlq)", self.pid, kind, size, limit)  # fmt: skip
                    await self.clock.sleep(min(30.0, 1.0 * attempt))
                if attempt and self.state == "queue-full":
                    self._set_state(previous if previous != "queue-full" else "running")
                    self.last_error = None
                    log.warning("queue has room again: %s: %s", self.pid, kind)
        await self._with_state_retry(lambda: self.deadletters.add(entries))
        for kind, items in kinds.items():
            reasons: dict[str, int] = {}
            for e in items:
                reasons[e.rule or e.stage] = reasons.get(e.rule or e.stage, 0) + 1
            self.events.queued(self.pid, kind, reasons)

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


async def _whole(events: list[ChangeEvent]) -> AsyncIterator[Any]:
    """``events`` as the one part a branch without a schema gate writes."""
    yield _Part(events)


class _Part:
    __slots__ = ("events", "rejections")

    def __init__(self, events: list[ChangeEvent]) -> None:
        self.events = events
        self.rejections: list[RejectionLike] = []


def completed_positions(units: Sequence[_Unit], rows: int) -> list[dict[bytes, Position]]:
    """For each ``rows``-event chunk of the units' events, the positions completed once it is
    written: the merged ``upto`` of every unit whose events all lie in it or before (a unit split
    over chunks counts with its last one, so a CDC log group is never recorded half-written)."""
    total = sum(len(u.events) for u in units)
    out: list[dict[bytes, Position]] = []
    merged: dict[bytes, Position] = {}
    end = k = 0
    for limit in range(rows, total + rows, rows):
        while k < len(units) and end + len(units[k].events) <= limit:
            end += len(units[k].events)
            merged.update(units[k].upto or {})
            k += 1
        out.append(dict(merged))
    return out


def _min_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


async def aclose(it: AsyncIterator[EventBatch]) -> None:
    """Close an async iterator (a reader), ignoring what closing raises."""
    close = getattr(it, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
