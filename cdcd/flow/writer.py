"""Writing one chunk of events to a sink until every row is applied or dead-lettered (R-23, R-40).

``SinkWriter.write(events)``:

* asks the destination's ``CircuitBreaker`` first; while it is open, waits (state
  ``circuit-open``);
* calls ``sink.write(mapping, pending)`` under ``write_timeout`` (a timeout is retriable);
* retriable errors (``SinkUnavailable``, timeouts): the breaker counts a failure, wait with
  backoff, write the same rows again, forever (nothing is dropped because a destination is down);
* ``BadRows({index: reason})``: the destination is fine (breaker success). Deterministic ones
  (the default: the destination refused the data, PostgreSQL SQLSTATE 22/23, ClickHouse's
  equivalents) go to the *validation* queue at once (stage ``destination``) and the rest is
  written again without waiting: a good row behind a bad one is not held up by a retry schedule.
  Non-deterministic ones use one of their ``max_attempts`` each; rows out of attempts are handed
  to ``dead_letter`` and removed, the others are written again (after backoff if some bad rows
  remain, at once otherwise). The failed transaction committed nothing, so every good row is
  applied exactly once;
* any other error propagates and stops the pipeline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from cdcd.errors import BadRows
from cdcd.events import ChangeEvent, Position
from cdcd.flow.clock import Clock, wait_first
from cdcd.flow.contracts import BatchSink, FlowEvents, PipelineId, PipelineState, PositionSink
from cdcd.flow.retry import CircuitBreaker, RetryPolicy, is_retriable
from cdcd.state.deadletter import DeadLetter, DeadLetterStore

__all__ = ["SinkWriter", "WriteStats", "stale_reason"]

log = logging.getLogger(__name__)


def _rfc3339(us: int) -> str:
    return (
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def stale_reason(event: ChangeEvent, row_us: int | None, row_version: Any = None) -> str:
    """The audit reason of an event the version guard skipped as older than its row: both write
    times (RFC 3339 and µs since the epoch) and, with a version column, both versions."""
    ev_time = f"{_rfc3339(event.write_time_us)} ({event.write_time_us} us)"
    row_time = "unknown" if row_us is None else f"{_rfc3339(row_us)} ({row_us} us)"
    text = f"stale: event written at {ev_time}; destination row written at {row_time}"
    if row_version is not None:
        text += f"; destination row version {row_version!r}"
    return text


class WriteStats:
    """Counters of one writer, read by ``Pipeline.status()``."""

    __slots__ = (
        "applied", "dead_lettered", "last_error", "last_event_us", "rejected", "retries", "skipped_stale",
    )  # fmt: skip

    def __init__(self) -> None:
        self.applied = 0
        self.rejected = 0  # rows the destination refused (deterministic BadRows): validation queue
        self.skipped_stale = 0
        self.dead_lettered = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_event_us: int | None = None


class SinkWriter:
    """Retry/breaker/dead-letter policy around ``sink.write`` for one pipeline."""

    def __init__(
        self,
        *,
        sink: BatchSink,
        mapping: Any,
        destination: str,
        breaker: CircuitBreaker,
        retry: RetryPolicy,
        write_timeout: float,
        clock: Clock,
        events: FlowEvents,
        pid: PipelineId,
        dead_letter: Callable[[list[DeadLetter]], Awaitable[None]],
        set_state: Callable[[PipelineState | None], None],
        audit_stale: bool = True,
    ) -> None:
        self.sink = sink
        self.mapping = mapping
        self.destination = destination
        self.breaker = breaker
        self.retry = retry
        self.write_timeout = write_timeout
        self.clock = clock
        self.events = events
        self.pid = pid
        self.dead_letter = dead_letter
        self.set_state = set_state  # None = back to normal after a retry/breaker wait
        # record events the version guard found stale in the staleness audit (False: only count
        # them; cdcd snapshot, whose rows losing to newer streamed changes are expected)
        self.audit_stale = audit_stale
        self.stats = WriteStats()

    async def write(
        self, events: list[ChangeEvent], positions: Mapping[bytes, Position] | None = None
    ) -> None:
        """Return once every row of ``events`` is applied or dead-lettered. See the module doc.
        ``positions`` (the positions this chunk completes) go with every attempt to a sink that
        records them (``cdcd.flow.applied.RecordingSink``)."""
        pending = events
        attempts = [0] * len(pending)
        first_failed: list[float | None] = [None] * len(pending)
        failures = 0
        while pending:
            wait = self.breaker.wait_time()
            if wait > 0:
                self.set_state("circuit-open")
                await self.clock.sleep(wait)
                continue
            started = self.clock.monotonic()
            try:
                attempt = (
                    self.sink.write(self.mapping, pending)
                    if positions is None
                    else cast(PositionSink, self.sink).write(self.mapping, pending, positions)
                )
                ok, outcome = await wait_first(self.clock, attempt, self.write_timeout)
                if not ok or outcome is None:
                    raise TimeoutError(f"sink {self.sink.name} write took over {self.write_timeout} s")
            except BadRows as exc:
                self.breaker.record_success()  # the destination answered; the data is at fault
                pending, attempts, first_failed, delay = await self._bad_rows(
                    exc, pending, attempts, first_failed
                )
                if delay > 0:
                    self.stats.retries += 1
                    self.events.write_failed(self.pid, exc, max(attempts), delay)
                    self.set_state("retrying")
                    await self.clock.sleep(delay)
                continue
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise
            except Exception as exc:
                if not is_retriable(exc):
                    self.breaker.abandon()
                    raise
                self.breaker.record_failure()
                failures += 1
                delay = self.retry.delay(failures)
                self.stats.retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.events.write_failed(self.pid, exc, failures, delay)
                log.warning("sink write failed, retrying: %s: %s", self.pid, exc)
                self.set_state("retrying")
                await self.clock.sleep(delay)
                continue
            self.breaker.record_success()
            self.stats.applied += outcome.applied
            self.stats.skipped_stale += outcome.skipped_stale
            await self._audit_stale(pending, outcome)
            self.stats.last_event_us = max(e.write_time_us for e in pending)
            self.events.batch_written(self.pid, pending, outcome, self.clock.monotonic() - started)
            self.set_state(None)
            pending = []

    async def _audit_stale(self, pending: list[ChangeEvent], outcome: Any) -> None:
        """Record the events the version guard found older than their destination row in the
        staleness audit (``stale`` queue; duplicates are only counted)."""
        stale = [s for s in getattr(outcome, "skipped", ()) if s.reason == "stale"]
        if not stale or not self.audit_stale:
            return
        now = self.clock.time()
        entries = [
            DeadLetterStore.make(
                "stale",
                self.destination,
                pending[s.index],
                reason=stale_reason(pending[s.index], s.row_write_time_us, s.row_version),
                stage="version-guard",
                attempts=0,
                first_failed_at=now,
            )
            for s in stale
        ]
        await self.dead_letter(entries)

    async def _bad_rows(
        self,
        exc: BadRows,
        pending: list[ChangeEvent],
        attempts: list[int],
        first_failed: list[float | None],
    ) -> tuple[list[ChangeEvent], list[int], list[float | None], float]:
        """Count an attempt for each bad row; dead-letter rows out of attempts. Returns what is
        left to write and how long to wait first (0: no bad row is left, retry at once)."""
        bad = set(exc.errors)
        if not bad or not bad <= set(range(len(pending))):
            raise RuntimeError(
                f"sink {self.sink.name} raised BadRows with indices {sorted(exc.errors)} "
                f"for a batch of {len(pending)} rows"
            )
        now = self.clock.time()
        self.stats.last_error = f"BadRows: {exc}"
        deterministic = getattr(exc, "deterministic", True)
        for i in bad:
            attempts[i] += 1
            first_failed[i] = first_failed[i] or now
        dead = bad if deterministic else {i for i in bad if self.retry.exhausted(attempts[i])}
        if dead:
            entries = [
                DeadLetterStore.make(
                    "validation" if deterministic else "dead",
                    self.destination,
                    pending[i],
                    reason=exc.errors[i],
                    stage="destination" if deterministic else "sending",
                    attempts=attempts[i],
                    first_failed_at=first_failed[i] or now,
                    last_failed_at=now,
                    rule="destination" if deterministic else "",
                )
                for i in sorted(dead)
            ]
            await self.dead_letter(entries)
            if deterministic:
                self.stats.rejected += len(dead)
                self.events.rejected(self.pid, "destination", len(dead))
                log.warning("rows refused by the destination, to the validation queue: %s: %d: %s",
                            self.pid, len(dead), exc.errors[min(dead)])  # fmt: skip
            else:
                self.stats.dead_lettered += len(dead)
                self.events.dead_lettered(self.pid, len(dead))
                log.error(
                    "rows dead-lettered after %d attempts: %s: %d",
                    self.retry.max_attempts,
                    self.pid,
                    len(dead),
                )
        keep = [i for i in range(len(pending)) if i not in dead]
        left_bad = [attempts[i] for i in keep if i in bad]
        delay = self.retry.delay(max(left_bad)) if left_bad else 0.0
        return [pending[i] for i in keep], [attempts[i] for i in keep], [first_failed[i] for i in keep], delay
