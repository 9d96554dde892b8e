"""One read, many writers: a ``SharedReader`` feeding several ``Branch``es, with real Redis state.

The log is an in-memory, growing list of batches (``LiveLog``) read by the shared reader and by
the catch-up readers of detached branches; sinks are in-memory doubles (this is the flow's own
test). Checked: each batch is read once while every branch is shared; a branch whose destination
stalls detaches without holding the other back, catches up on its own reader, rejoins, and ends
with every change applied exactly once; checkpoints stay per destination.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from cdcd.events import ChangeEvent, EventBatch, Position
from cdcd.flow import Branch, BranchMode, CommitPolicy, NoFlowEvents, PipelineId, SharedReader
from cdcd.state import CheckpointStore, DeadLetterStore
from tests.integration.test_pipeline import FAST, GROUP, S1, S2, MemorySink, batch, ev, pos


class LiveLog:
    """Batches appended over time; ``read(start)`` yields those after ``start`` (per stream, as
    the real reader does), then waits for more until ``close()``."""

    def __init__(self) -> None:
        self.batches: list[EventBatch] = []
        self.closed = False
        self._grew = asyncio.Event()
        self.opened: list[tuple[str, dict[bytes, Position]]] = []
        self.read_by: dict[str, int] = {}

    def append(self, b: EventBatch) -> None:
        self.batches.append(b)
        self._grew.set()

    def close(self) -> None:
        self.closed = True
        self._grew.set()

    def reader(self, who: str) -> Any:
        async def read(start: Mapping[bytes, Position]) -> AsyncIterator[EventBatch]:
            self.opened.append((who, dict(start)))
            i = 0
            while True:
                while i < len(self.batches):
                    b = self.batches[i]
                    i += 1
                    if all(s in start and p.sort_key() <= start[s].sort_key() for s, p in b.upto.items()):
                        continue
                    self.read_by[who] = self.read_by.get(who, 0) + 1
                    yield b
                    await asyncio.sleep(0)
                if self.closed:
                    return
                self._grew.clear()
                await self._grew.wait()

        return read


class Modes(NoFlowEvents):
    def __init__(self) -> None:
        self.seen: list[tuple[str, BranchMode, str]] = []

    def mode_changed(self, pid: PipelineId, old: BranchMode, new: BranchMode, reason: str) -> None:
        self.seen.append((pid.destination, new, reason))


def branch(
    dest: str, sink: MemorySink, log: LiveLog, stores: tuple[CheckpointStore, DeadLetterStore], events: Modes
) -> Branch:
    return Branch(
        destination=dest, group=GROUP, mapping=None, sink=sink, checkpoints=stores[0], deadletters=stores[1],
        config=FAST, events=events, catch_up=log.reader(f"catch-up:{dest}"),
    )  # fmt: skip


def numbered(n: int) -> EventBatch:
    return batch(n, ev(n, S1 if n % 2 else S2))


async def until(check: Any, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def ids(sink: MemorySink) -> list[int]:
    return sorted(sink.ids())


async def run_all(shared: SharedReader, branches: Sequence[Branch]) -> None:
    reading = asyncio.ensure_future(shared.run())
    try:
        await asyncio.gather(*(b.run(shared) for b in branches))
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


async def test_every_batch_is_read_once_for_all_destinations(stores: Any) -> None:
    log, modes = LiveLog(), Modes()
    for n in range(1, 41):
        log.append(numbered(n))
    log.close()
    sinks = {d: MemorySink() for d in ("pg", "ch", "ts")}
    branches = [branch(d, s, log, stores, modes) for d, s in sinks.items()]
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=3, detach_after=5.0)
    await asyncio.wait_for(run_all(shared, branches), 20)
    assert log.read_by == {"shared": 40}  # one read, three writers
    assert [o[0] for o in log.opened] == ["shared"]
    for d, sink in sinks.items():
        assert ids(sink) == list(range(1, 41)), d
        assert await stores[0].is_done(d, GROUP)
        assert await stores[0].load(d, GROUP) == {S1: pos(S1, 40), S2: pos(S2, 40)}
    assert {b.state for b in branches} == {"done"} and modes.seen == []


async def test_a_stalled_destination_detaches_catches_up_alone_and_rejoins(stores: Any) -> None:
    log, modes = LiveLog(), Modes()
    for n in range(1, 11):
        log.append(numbered(n))
    fast = MemorySink()
    slow = MemorySink(block=lambda e: e.key["id"] >= 5)  # stalls from change 5 on until the gate opens
    pg, ch = branch("pg", fast, log, stores, modes), branch("ch", slow, log, stores, modes)
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=2, detach_after=0.2)
    running = asyncio.ensure_future(run_all(shared, [pg, ch]))
    try:
        # ClickHouse stalls; its buffer fills (queue_size batches) and it detaches, while
        # PostgreSQL keeps applying everything the log receives.
        for n in range(11, 101):
            log.append(numbered(n))
        await until(lambda: ch.mode == "catching-up")
        await until(lambda: fast.ids() and max(fast.ids()) == 100)
        assert pg.mode == "shared" and ch.mode == "catching-up"
        assert ch.status().mode == "catching-up" and pg.status().mode == "shared"
        # Back: ClickHouse writes what it holds, reads the rest on its own cursor, rejoins.
        slow.gate.set()
        await until(lambda: ch.mode == "shared")
        for n in range(101, 121):
            log.append(numbered(n))
        log.close()
        await asyncio.wait_for(running, 20)
    finally:
        running.cancel()
    assert ids(fast) == list(range(1, 121))
    assert ids(slow) == list(range(1, 121))  # nothing lost, nothing applied twice
    assert ("ch", "catching-up", "buffer full") in modes.seen and ("ch", "shared", "rejoined") in modes.seen
    assert not [m for m in modes.seen if m[0] == "pg"]
    # The catch-up reader started exactly where ClickHouse's branch had stopped taking batches.
    (_who, start), *_ = [o for o in log.opened if o[0] == "catch-up:ch"]
    assert max(start[S1].sort_key(), start[S2].sort_key()) < pos(S1, 100).sort_key()
    for d in ("pg", "ch"):
        assert await stores[0].is_done(d, GROUP)
        assert await stores[0].load(d, GROUP) == {S1: pos(S1, 120), S2: pos(S2, 120)}


async def test_a_destination_far_behind_at_start_catches_up_without_holding_back_the_other(
    stores: Any,
) -> None:
    log, modes = LiveLog(), Modes()
    for n in range(1, 31):
        log.append(numbered(n))
    log.close()
    # PostgreSQL already applied up to change 30 (a checkpoint past the whole log); ClickHouse
    # nothing. Distances here are 100 ns timeuuid steps, so a 0 s gap makes ClickHouse "far".
    await stores[0].save("pg", GROUP, {S1: pos(S1, 30), S2: pos(S2, 30)})
    fast, slow = MemorySink(), MemorySink()
    pg, ch = branch("pg", fast, log, stores, modes), branch("ch", slow, log, stores, modes)
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=2, rejoin_gap=0.0)
    await asyncio.wait_for(run_all(shared, [pg, ch]), 20)
    assert fast.ids() == [] and ids(slow) == list(range(1, 31))
    assert ("ch", "catching-up", "far behind at start") in modes.seen
    assert log.read_by.get("shared", 0) == 0  # the shared reader started past the whole log


async def test_a_branch_joins_a_running_reader_and_catches_up(stores: Any) -> None:
    log, modes = LiveLog(), Modes()
    for n in range(1, 21):
        log.append(numbered(n))
    fast, late = MemorySink(), MemorySink()
    pg, ch = branch("pg", fast, log, stores, modes), branch("ch", late, log, stores, modes)
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=2, join_grace=0.05)
    reading = asyncio.ensure_future(shared.run())
    first = asyncio.ensure_future(pg.run(shared))
    try:
        await until(lambda: fast.ids() and max(fast.ids()) == 20)  # ClickHouse's sink was down
        second = asyncio.ensure_future(ch.run(shared))
        await until(lambda: ("ch", "shared", "rejoined") in modes.seen)
        for n in range(21, 31):
            log.append(numbered(n))
        log.close()
        await asyncio.wait_for(asyncio.gather(first, second), 20)
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    assert ids(fast) == ids(late) == list(range(1, 31))
    assert [m[1:] for m in modes.seen] == [("catching-up", "joined late"), ("shared", "rejoined")]


async def test_checkpoints_stay_per_destination(stores: Any) -> None:
    """A stalled destination's checkpoint stays behind while the other's moves on."""
    log, modes = LiveLog(), Modes()
    fast, slow = MemorySink(), MemorySink(block=lambda e: e.key["id"] >= 3)
    assert FAST.commit == CommitPolicy(every_s=0.0, every_events=1)  # every resolved event commits
    pg, ch = branch("pg", fast, log, stores, modes), branch("ch", slow, log, stores, modes)
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=2, detach_after=0.1)
    running = asyncio.ensure_future(run_all(shared, [pg, ch]))

    async def saved(dest: str, n: int) -> bool:
        for _ in range(500):
            if await stores[0].load(dest, GROUP) == {S1: pos(S1, n), S2: pos(S2, n)}:
                return True
            await asyncio.sleep(0.01)
        return False

    try:
        for n in (1, 2):
            log.append(numbered(n))
        assert await saved("ch", 2) and await saved("pg", 2)
        for n in range(3, 6):
            log.append(numbered(n))
        await until(lambda: len(fast.ids()) == 5)
        assert await saved("pg", 5)
        assert await stores[0].load("ch", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}
        ch.terminate()  # kill: ClickHouse's branch abandons its stalled write
        await asyncio.sleep(0.05)
        assert await stores[0].load("ch", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}
        log.close()
        await asyncio.wait_for(running, 20)
    finally:
        running.cancel()
    assert pg.state == "done" and ch.state == "terminated"


async def test_a_failing_destination_stage_fails_only_its_branch(stores: Any) -> None:
    def lossy(events: Sequence[ChangeEvent]) -> tuple[list[ChangeEvent], list[Any]]:
        return list(events[1:]), []

    log, modes = LiveLog(), Modes()
    for n in range(1, 6):
        log.append(numbered(n))
    log.close()
    fast = MemorySink()
    pg = branch("pg", fast, log, stores, modes)
    ch = Branch(
        destination="ch", group=GROUP, mapping=None, sink=MemorySink(), checkpoints=stores[0],
        deadletters=stores[1], config=FAST, stages=[lossy], catch_up=log.reader("catch-up:ch"),
    )  # fmt: skip
    shared = SharedReader(group=GROUP, source=log.reader("shared"), expected=2)
    reading = asyncio.ensure_future(shared.run())
    try:
        results = await asyncio.wait_for(
            asyncio.gather(pg.run(shared), ch.run(shared), return_exceptions=True), 20
        )
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], RuntimeError)
    assert pg.state == "done" and ch.state == "failed"
    assert ids(fast) == [1, 2, 3, 4, 5]


async def test_no_detach_while_the_process_is_out_of_cpu(stores: Any) -> None:
    """The other branch looks hungry only because the loop is busy: a second read would cost
    more CPU, so the slow branch paces the reader instead of detaching."""
    log, modes = LiveLog(), Modes()
    for n in range(1, 301):
        log.append(numbered(n))
    fast, slow = MemorySink(), MemorySink(block=lambda e: e.key["id"] >= 5)
    pg, ch = branch("pg", fast, log, stores, modes), branch("ch", slow, log, stores, modes)
    shared = SharedReader(
        group=GROUP, source=log.reader("shared"), expected=2, detach_after=0.05, busy=lambda: True
    )
    running = asyncio.ensure_future(run_all(shared, [pg, ch]))
    try:
        await until(lambda: len(fast.ids()) >= 4)
        await asyncio.sleep(0.5)  # ten times detach_after
        assert ch.mode == "shared" and modes.seen == []
        assert max(fast.ids()) < 300  # PostgreSQL waits for ClickHouse's room
        slow.gate.set()
        log.close()
        await asyncio.wait_for(running, 20)
    finally:
        running.cancel()
    assert ids(fast) == ids(slow) == list(range(1, 301))
    assert log.read_by == {"shared": 300}
