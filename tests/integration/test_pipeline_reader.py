"""Pipelines fed by the real GroupReader (Scylla emulator through the driver), Redis state.

Proves the seams: ``GroupReader.read`` is a ``SourceFactory``, ``StreamGroup`` a ``GroupRef``;
a restart resumes from the saved checkpoints; a closed generation ends its pipelines as done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest

from cdcd.events import ChangeEvent
from cdcd.flow import BatchPolicy, CommitPolicy, Pipeline, PipelineConfig, RetryPolicy
from cdcd.scylla import GroupReader, ReaderConfig, ScyllaSession, StreamDiscovery, StreamGroup
from cdcd.state import CheckpointStore, DeadLetterStore

READER = ReaderConfig(
    confidence_window_s=0.5,
    window_s=0.5,
    max_window_s=5.0,
    poll_interval_s=0.1,
    generation_poll_s=0.2,
    retry_initial_s=0.1,
    retry_max_s=0.5,
)
FLOW = PipelineConfig(
    batch=BatchPolicy(max_rows=50, max_wait=0.05),
    retry=RetryPolicy(initial=0.05, max=0.2),
    commit=CommitPolicy(every_s=0.1, every_events=20),
)


class Outcome(msgspec.Struct):
    applied: int
    skipped_stale: int = 0


class TableSink:
    """In-memory destination: last write wins per key; counts every application."""

    name = "memory"

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.writes: list[int] = []

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> Outcome:
        for e in events:
            self.rows[e.key["pk"]] = e.values["v"]
            self.writes.append(e.key["pk"])
        return Outcome(applied=len(events))


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        yield session
    finally:
        await session.aclose()


def pipelines(
    scylla: ScyllaSession,
    discovery: StreamDiscovery,
    groups: list[StreamGroup],
    sink: TableSink,
    stores: tuple[CheckpointStore, DeadLetterStore],
) -> list[Pipeline]:
    return [
        Pipeline(
            destination="mem",
            group=g,
            mapping=None,
            sink=sink,
            checkpoints=stores[0],
            deadletters=stores[1],
            source=GroupReader(scylla, discovery, g, config=READER, start_floor_ms=0).read,
            config=FLOW,
        )
        for g in groups
    ]


async def until(check: Any, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_replicates_resumes_from_checkpoints_and_finishes_closed_generations(
    scylla: ScyllaSession, stores: tuple[CheckpointStore, DeadLetterStore]
) -> None:
    await scylla.execute(
        "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    await scylla.execute("CREATE TABLE ks.t (pk int PRIMARY KEY, v text) WITH cdc = {'enabled': true}")
    discovery = StreamDiscovery(scylla)
    groups = await discovery.groups("ks.t", since_ms=0, ttl_s=86400)
    for i in range(20):
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'a{i}')")

    sink = TableSink()
    first = pipelines(scylla, discovery, groups, sink, stores)
    runs = [asyncio.create_task(p.run()) for p in first]
    await until(lambda: len(sink.rows) == 20)
    await asyncio.gather(*(p.close(deadline=10) for p in first))
    await asyncio.gather(*runs)
    assert {p.state for p in first} == {"closed"}
    assert sink.rows == {i: f"a{i}" for i in range(20)}
    assert sorted(sink.writes) == list(range(20))
    saved = {s: p for g in groups for s, p in (await stores[0].load("mem", g)).items()}
    assert saved, "close() saved checkpoints"

    # Writes while stopped, then a generation switch: the restarted pipelines pick up only the
    # new writes and end as "done" once the old generation is fully read.
    for i in range(20, 30):
        await scylla.execute(f"UPDATE ks.t SET v = 'b{i}' WHERE pk = {i}")
    await scylla.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '300')")
    second = pipelines(scylla, discovery, groups, sink, stores)
    await asyncio.wait_for(asyncio.gather(*(p.run() for p in second)), 30)
    assert {p.state for p in second} == {"done"}
    assert sink.rows == {**{i: f"a{i}" for i in range(20)}, **{i: f"b{i}" for i in range(20, 30)}}
    assert sorted(sink.writes) == list(range(30))  # nothing applied twice, nothing lost
    assert all([await stores[0].is_done("mem", g) for g in groups])
    newer = [
        g
        for g in await discovery.groups("ks.t", since_ms=0, ttl_s=86400)
        if g.generation != groups[0].generation
    ]
    assert newer and not any([await stores[0].is_done("mem", g) for g in newer])
