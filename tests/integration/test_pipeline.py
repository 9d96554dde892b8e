"""Pipeline behaviour with real Redis state, an in-memory source and an in-memory sink double.

The sink double stands in for a destination (this is the pipeline's own unit test); checkpoints
and dead letters are read back from the real Redis server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cdcd.errors import BadRows, LeaseLost, SinkUnavailable, SourceUnavailable
from cdcd.events import ChangeEvent, EventBatch, Op, Position
from cdcd.flow import (
    BatchPolicy,
    CircuitBreaker,
    Clock,
    CommitPolicy,
    ManualClock,
    NoFlowEvents,
    Pipeline,
    PipelineConfig,
    PipelineId,
    PipelineState,
    RetryPolicy,
    SystemClock,
)
from cdcd.scylla.generations import StreamGroup
from cdcd.state import CheckpointStore, DeadLetterStore, entry_id
from tests.conftest import free_port

GEN = 1_700_000_000_000
S1, S2 = b"\x01" * 16, b"\x02" * 16
GROUP = StreamGroup(table="ks.t", generation=GEN, end=None, streams=(S1, S2), key=f"{GEN}:0")
BASE_TS = 0x1EE0000000000000  # a 60-bit timeuuid timestamp (100 ns units since 1582)


def tu(ts: int) -> uuid.UUID:
    time_low, time_mid, time_hi = ts & 0xFFFFFFFF, (ts >> 32) & 0xFFFF, (ts >> 48) & 0x0FFF
    return uuid.UUID(int=(time_low << 96) | (time_mid << 80) | ((0x1000 | time_hi) << 64) | 0x80)


def pos(stream: bytes, n: int) -> Position:
    return Position(generation=GEN, stream_id=stream, time=tu(BASE_TS + n))


def ev(n: int, stream: bytes = S1, **values: Any) -> ChangeEvent:
    return ChangeEvent(
        table="ks.t",
        pos=pos(stream, n),
        batch_seq=0,
        op=Op.UPDATE,
        write_time_us=1_700_000_000_000_000 + n,
        key={"id": n},
        values=values or {"v": n},
    )


def batch(n: int, *events: ChangeEvent) -> EventBatch:
    """A read window ending at ``n`` on both streams."""
    return EventBatch(events=list(events), upto={S1: pos(S1, n), S2: pos(S2, n)})


class ListSource:
    """Yields its batches strictly after ``start``; optionally stays open, or fails once."""

    def __init__(self, batches: list[EventBatch], *, hold_open: bool = False, fail_before: int | None = None):
        self.batches = batches
        self.hold_open = hold_open
        self.fail_before = fail_before
        self.opened: list[dict[bytes, Position]] = []

    async def read(self, start: Mapping[bytes, Position]) -> AsyncIterator[EventBatch]:
        self.opened.append(dict(start))
        for i, b in enumerate(self.batches):
            if all(s in start and p.sort_key() <= start[s].sort_key() for s, p in b.upto.items()):
                continue
            if i == self.fail_before:
                self.fail_before = None
                raise SourceUnavailable("scylla: connection reset")
            yield b
        if self.hold_open:
            await asyncio.Event().wait()


class Outcome(msgspec.Struct):
    applied: int
    skipped_stale: int = 0


class MemorySink:
    """Destination double: one transaction per write; failures commit nothing."""

    name = "memory"

    def __init__(
        self,
        *,
        unavailable: int = 0,
        bad: Callable[[ChangeEvent], str | None] = lambda e: None,
        block: Callable[[ChangeEvent], bool] = lambda e: False,
        deterministic: bool = True,
    ) -> None:
        self.deterministic = deterministic
        self.unavailable = unavailable
        self.bad = bad
        self.block = block
        self.gate = asyncio.Event()
        self.blocked = asyncio.Event()
        self.calls = 0
        self.applied: list[ChangeEvent] = []

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> Outcome:
        self.calls += 1
        if any(self.block(e) for e in events) and not self.gate.is_set():
            self.blocked.set()
            await self.gate.wait()
        if self.unavailable > 0:
            self.unavailable -= 1
            raise SinkUnavailable("connection refused")
        errors = {i: reason for i, e in enumerate(events) if (reason := self.bad(e)) is not None}
        if errors:
            raise BadRows(errors, deterministic=self.deterministic)
        self.applied.extend(events)
        return Outcome(applied=len(events))

    def ids(self) -> list[int]:
        return [e.key["id"] for e in self.applied]


class States(NoFlowEvents):
    def __init__(self) -> None:
        self.seen: list[PipelineState] = []
        self.changed = asyncio.Event()

    def state_changed(self, pid: PipelineId, old: PipelineState, new: PipelineState) -> None:
        self.seen.append(new)
        self.changed.set()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def checkpoints(redis_client: aioredis.Redis, redis_prefix: str) -> CheckpointStore:
    return CheckpointStore(redis_client, prefix=redis_prefix)


@pytest.fixture
def deadletters(redis_client: aioredis.Redis, redis_prefix: str) -> DeadLetterStore:
    return DeadLetterStore(redis_client, prefix=redis_prefix)


FAST = PipelineConfig(
    batch=BatchPolicy(max_rows=100, max_wait=0.01),
    retry=RetryPolicy(initial=0.01, max=0.05, max_attempts=3),
    commit=CommitPolicy(every_s=0.0, every_events=1),
)


def make(
    source: ListSource,
    sink: MemorySink,
    checkpoints: CheckpointStore,
    deadletters: DeadLetterStore,
    *,
    config: PipelineConfig = FAST,
    clock: Clock | None = None,
    **kw: Any,
) -> Pipeline:
    clock = clock or SystemClock()
    return Pipeline(
        destination="pg", group=GROUP, mapping="ks.t -> public.t", source=source.read, sink=sink,
        checkpoints=checkpoints, deadletters=deadletters, config=config, clock=clock,
        breaker=kw.pop("breaker", None) or CircuitBreaker(clock), **kw,
    )  # fmt: skip


async def test_applies_everything_once_commits_and_marks_the_generation_done(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    source = ListSource([batch(1, ev(1)), batch(2), batch(3, ev(3, S2), ev(4)), batch(5)])
    sink = MemorySink()
    pipeline = make(source, sink, checkpoints, deadletters)
    await asyncio.wait_for(pipeline.run(), 10)
    assert pipeline.state == "done"
    assert sink.ids() == [1, 3, 4]
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 5), S2: pos(S2, 5)}
    assert await checkpoints.is_done("pg", GROUP)
    status = pipeline.status()
    assert (status.events_applied, status.queue_depth, status.in_flight) == (3, 0, 0)
    assert msgspec.json.decode(msgspec.json.encode(status))["state"] == "done"
    assert status.checkpoint == {S1.hex(): str(pos(S1, 5).time), S2.hex(): str(pos(S2, 5).time)}

    # A restarted pipeline sees the done marker and reads nothing.
    again = ListSource(source.batches)
    second = make(again, MemorySink(), checkpoints, deadletters)
    await asyncio.wait_for(second.run(), 10)
    assert second.state == "done" and again.opened == []


async def test_checkpoint_stops_before_the_batch_being_written_and_terminate_commits_nothing(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    batches = [batch(1, ev(1)), batch(2, ev(2)), batch(3, ev(3)), batch(4), batch(5, ev(5))]
    sink = MemorySink(block=lambda e: e.key["id"] == 3)
    config = msgspec.structs.replace(FAST, batch=BatchPolicy(max_rows=1, max_wait=0))
    pipeline = make(ListSource(batches, hold_open=True), sink, checkpoints, deadletters, config=config)
    run = asyncio.ensure_future(pipeline.run())
    await asyncio.wait_for(sink.blocked.wait(), 10)
    for _ in range(100):  # let the writer's periodic commit of batch 2 land
        if await checkpoints.load("pg", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}:
            break
        await asyncio.sleep(0.01)
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}
    assert pipeline.status().positions == {S1.hex(): str(pos(S1, 2).time), S2.hex(): str(pos(S2, 2).time)}

    pipeline.terminate()
    await asyncio.wait_for(run, 10)
    assert pipeline.state == "terminated"
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}
    assert not await checkpoints.is_done("pg", GROUP)

    # Restart: resumes after batch 2, so batch 3 is written once more and nothing is lost.
    source = ListSource(batches)
    sink2 = MemorySink()
    await asyncio.wait_for(make(source, sink2, checkpoints, deadletters).run(), 10)
    assert source.opened == [{S1: pos(S1, 2), S2: pos(S2, 2)}]
    assert sink.ids() + sink2.ids() == [1, 2, 3, 5]


async def test_rows_the_destination_refuses_go_to_the_validation_queue_at_once(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    clock = ManualClock()
    bad = ev(3, bad="x" * 5)
    source = ListSource([batch(9, ev(1), ev(2), bad, ev(4, S2), ev(5))])
    sink = MemorySink(bad=lambda e: "22001 value too long" if "bad" in e.values else None)
    config = msgspec.structs.replace(FAST, retry=RetryPolicy(initial=1, max=60, max_attempts=3))
    pipeline = make(source, sink, checkpoints, deadletters, config=config, clock=clock)
    start = clock.monotonic()
    await clock.run_until(pipeline.run())
    assert clock.monotonic() - start < 1  # no backoff: a deterministic data error is not retried
    assert sink.ids() == [1, 2, 4, 5]
    assert sink.calls == 2  # one refusal, then the good rows once
    assert await deadletters.count("dead", "pg") == 0
    (entry,) = await deadletters.list("validation", "pg")
    assert (entry.id, entry.event, entry.reason, entry.attempts, entry.stage, entry.rule) == (
        entry_id(bad), bad, "22001 value too long", 1, "destination", "destination",
    )  # fmt: skip
    assert pipeline.status().events_rejected == 1
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 9), S2: pos(S2, 9)}


async def test_a_full_validation_queue_pauses_the_branch_until_entries_are_dropped(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    states = States()
    source = ListSource([batch(1, ev(1, bad="x"), ev(2, bad="y")), batch(2, ev(3, bad="z"), ev(4))])
    sink = MemorySink(bad=lambda e: "23514 check violated" if "bad" in e.values else None)
    config = msgspec.structs.replace(FAST, max_queue_entries=2, batch=BatchPolicy(max_rows=2, max_wait=0.01))
    pipeline = make(source, sink, checkpoints, deadletters, config=config, events=states)
    run = asyncio.ensure_future(pipeline.run())
    await asyncio.wait_for(_until(states, "queue-full"), 10)
    assert await deadletters.count("validation", "pg") == 2  # nothing dropped, nothing more added
    assert "validation queue of pg is full" in (pipeline.status().last_error or "")
    assert sink.ids() == []  # the second batch waits behind its rejection
    entries = await deadletters.list("validation", "pg")
    await deadletters.delete("validation", "pg", [e.id for e in entries])  # the operator drops them
    await asyncio.wait_for(run, 10)
    assert pipeline.state == "done"
    assert sink.ids() == [4]
    assert [e.event.key["id"] for e in await deadletters.list("validation", "pg")] == [3]
    assert "queue-full" in states.seen


async def _until(states: States, state: PipelineState) -> None:
    while state not in states.seen:
        states.changed.clear()
        await states.changed.wait()


async def test_bad_rows_go_to_the_dead_letter_store_and_the_rest_is_applied_once(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    clock = ManualClock()
    bad = ev(3, bad="x" * 5)
    source = ListSource([batch(9, ev(1), ev(2), bad, ev(4, S2), ev(5))])
    sink = MemorySink(bad=lambda e: "lock timeout" if "bad" in e.values else None, deterministic=False)
    config = msgspec.structs.replace(FAST, retry=RetryPolicy(initial=1, max=60, max_attempts=3))
    pipeline = make(source, sink, checkpoints, deadletters, config=config, clock=clock)
    await clock.run_until(pipeline.run())
    assert sink.ids() == [1, 2, 4, 5]
    assert sink.calls == 4  # three refusals of the batch, then the good rows once
    entries = await deadletters.list("dead", "pg")
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.id, entry.event, entry.reason, entry.attempts, entry.stage) == (
        entry_id(bad), bad, "lock timeout", 3, "sending",
    )  # fmt: skip
    assert entry.last_failed_at > entry.first_failed_at
    assert pipeline.status().events_dead_lettered == 1
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 9), S2: pos(S2, 9)}


async def test_unavailable_destination_is_retried_behind_the_circuit_breaker(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    clock = ManualClock()
    states = States()
    sink = MemorySink(unavailable=7)
    source = ListSource([batch(1, ev(1)), batch(2, ev(2))])
    config = msgspec.structs.replace(FAST, retry=RetryPolicy(max_attempts=3))  # not a limit here
    pipeline = make(source, sink, checkpoints, deadletters, config=config, clock=clock, events=states)
    start = clock.monotonic()
    await clock.run_until(pipeline.run())
    assert sink.ids() == [1, 2]
    assert pipeline.state == "done"
    assert "retrying" in states.seen and "circuit-open" in states.seen
    assert clock.monotonic() - start >= 30  # the breaker held writes back for its reset timeout
    assert pipeline.status().write_retries == 7
    assert await deadletters.count("dead", "pg") == 0


async def test_close_drains_what_was_read_and_commits(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    sink = MemorySink(block=lambda e: True)
    source = ListSource([batch(1, ev(1)), batch(2, ev(2)), batch(3, ev(3))], hold_open=True)
    pipeline = make(source, sink, checkpoints, deadletters)
    run = asyncio.ensure_future(pipeline.run())
    await asyncio.wait_for(sink.blocked.wait(), 10)
    closing = asyncio.ensure_future(pipeline.close(deadline=10))
    await asyncio.sleep(0.01)
    assert pipeline.state == "draining"
    sink.gate.set()
    await asyncio.wait_for(closing, 10)
    await asyncio.wait_for(run, 10)
    assert pipeline.state == "closed"
    assert sink.ids() == [1, 2, 3]
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 3), S2: pos(S2, 3)}
    assert not await checkpoints.is_done("pg", GROUP)


async def test_close_deadline_abandons_a_stuck_write_without_committing_it(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    clock = ManualClock()
    sink = MemorySink(block=lambda e: e.key["id"] == 2)
    source = ListSource([batch(1, ev(1)), batch(2, ev(2))], hold_open=True)
    config = msgspec.structs.replace(FAST, batch=BatchPolicy(max_rows=1, max_wait=0))
    pipeline = make(source, sink, checkpoints, deadletters, clock=clock, config=config)
    run = asyncio.ensure_future(pipeline.run())
    await asyncio.wait_for(sink.blocked.wait(), 10)
    await clock.run_until(pipeline.close(deadline=5))
    await asyncio.wait_for(run, 10)
    assert pipeline.state == "terminated"
    assert sink.ids() == [1]
    assert (await checkpoints.load("pg", GROUP)).get(S1) in (None, pos(S1, 1))


async def test_rejected_events_are_recorded_and_count_as_done(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    class Rejection(msgspec.Struct):
        event: ChangeEvent
        stage: str
        reason: str

    def validate(events: Sequence[ChangeEvent]) -> tuple[list[ChangeEvent], list[Rejection]]:
        bad = [e for e in events if e.values.get("v") == "invalid"]
        return [e for e in events if e not in bad], [Rejection(e, "validate", "v: not an int") for e in bad]

    class StageResult(msgspec.Struct):
        passed: list[ChangeEvent]
        rejected: list[Rejection]

    def staleness(events: Sequence[ChangeEvent]) -> StageResult:
        old = [e for e in events if e.key["id"] == 4]
        return StageResult(
            [e for e in events if e not in old], [Rejection(e, "staleness", "older than 7d") for e in old]
        )

    source = ListSource(
        [batch(5, ev(1), ev(2, v="invalid"), ev(3)), batch(6, ev(4)), batch(7, ev(6, v="invalid"))]
    )
    sink = MemorySink()
    pipeline = make(source, sink, checkpoints, deadletters, stages=[validate, staleness])
    await asyncio.wait_for(pipeline.run(), 10)
    assert sink.ids() == [1, 3]
    assert [e.event.key["id"] for e in await deadletters.list("validation", "pg")] == [2, 6]
    assert [e.event.key["id"] for e in await deadletters.list("stale", "pg")] == [4]
    assert pipeline.status().events_rejected == 3
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 7), S2: pos(S2, 7)}


async def test_a_stage_that_loses_events_fails_the_pipeline(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    def lossy(events: Sequence[ChangeEvent]) -> tuple[list[ChangeEvent], list[Any]]:
        return list(events[1:]), []

    pipeline = make(
        ListSource([batch(2, ev(1), ev(2))]), MemorySink(), checkpoints, deadletters, stages=[lossy]
    )
    with pytest.raises(RuntimeError, match="exactly one"):
        await asyncio.wait_for(pipeline.run(), 10)
    assert pipeline.state == "failed"
    assert await checkpoints.load("pg", GROUP) == {}


async def test_source_errors_reopen_the_reader_where_it_left_off(
    checkpoints: CheckpointStore, deadletters: DeadLetterStore
) -> None:
    batches = [batch(1, ev(1)), batch(2, ev(2)), batch(3, ev(3))]
    source = ListSource(batches, fail_before=2)
    sink = MemorySink()
    await asyncio.wait_for(make(source, sink, checkpoints, deadletters).run(), 10)
    assert sink.ids() == [1, 2, 3]
    assert source.opened == [{}, {S1: pos(S1, 2), S2: pos(S2, 2)}]


async def test_lost_lease_stops_the_pipeline_without_saving(
    redis_client: aioredis.Redis, redis_prefix: str, deadletters: DeadLetterStore
) -> None:
    class Fence:
        def lease_for(self, dest: str, group: object) -> tuple[str, str]:
            return f"{redis_prefix}:lease", "mine"

    await redis_client.set(f"{redis_prefix}:lease", "another replica")
    store = CheckpointStore(redis_client, prefix=redis_prefix, fence=Fence())
    sink = MemorySink()
    pipeline = make(ListSource([batch(1, ev(1))], hold_open=True), sink, store, deadletters)
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(pipeline.run(), 10)
    assert pipeline.state == "failed" and "LeaseLost" in (pipeline.status().last_error or "")
    assert await store.load("pg", GROUP) == {}


async def test_terminate_while_starting_against_an_unreachable_redis(deadletters: DeadLetterStore) -> None:
    clock = ManualClock()
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        store = CheckpointStore(client, prefix="cdcdtest:down")
        pipeline = make(ListSource([batch(1, ev(1))]), MemorySink(), store, deadletters, clock=clock)
        run = asyncio.ensure_future(pipeline.run())
        async with asyncio.timeout(10):
            while clock.sleepers == 0:  # noqa: ASYNC110 (backing off after the failed load)
                await asyncio.sleep(0.01)
        assert pipeline.state == "retrying"
        assert "Redis unavailable" in (pipeline.status().last_error or "")
        pipeline.terminate()
        clock.advance(60)
        await asyncio.wait_for(run, 10)
        assert pipeline.state == "terminated"
    finally:
        await client.aclose()
