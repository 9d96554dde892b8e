"""``DestinationCheckpoints`` on a real Redis and a real PostgreSQL: where a branch resumes when
Redis and the destination disagree (``cdcd.flow.applied``), and the order of a save
(destination first, then Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cdcd.events import ChangeEvent, Op, Position
from cdcd.flow.applied import DestinationCheckpoints, choose_start, records_applied
from cdcd.flow.branch import _Unit, completed_positions
from cdcd.scylla.generations import StreamGroup
from cdcd.scylla.windows import min_timeuuid
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from cdcd.state import CheckpointStore
from tests.contract.builders import PgConfig, schema

GEN = 1_690_000_000_000
S1, S2, S3 = (bytes([i]) * 16 for i in (1, 2, 3))
GROUP = StreamGroup(table="ks.t", generation=GEN, end=None, streams=(S1, S2, S3), key=f"{GEN}:0")
MAPPING = TableMapping(source="ks.t", target_schema="ks", target_table="t")


def at(stream: bytes, ms: int) -> Position:
    return Position(generation=GEN, stream_id=stream, time=min_timeuuid((GEN + ms) * 1000))


@pytest.fixture
async def parts(
    redis_url: str, redis_prefix: str, pg_dsn: str
) -> AsyncIterator[tuple[CheckpointStore, PostgresSink]]:
    client = aioredis.Redis.from_url(redis_url)
    sink = PostgresSink("pg", PgConfig(pg_dsn))
    await sink.connect()
    await sink.ensure_table(
        MAPPING,
        schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("v", "text", "regular")]),
    )
    try:
        yield CheckpointStore(client, prefix=redis_prefix), sink
    finally:
        await sink.aclose()
        await client.aclose()


def test_the_destination_wins_per_stream_redis_fills_the_gaps() -> None:
    redis = {S1: at(S1, 50), S2: at(S2, 10)}
    dest = {S1: at(S1, 20), S3: at(S3, 5)}
    # S1: Redis ahead of the destination (it lost data): the destination's; S2: only Redis has
    # one (recorded before the upgrade); S3: only the destination (Redis lost it).
    assert choose_start(redis, dest) == {S1: at(S1, 20), S2: at(S2, 10), S3: at(S3, 5)}


def _unit(n: int, upto: dict[bytes, Position]) -> _Unit:
    ev = ChangeEvent(table="ks.t", pos=at(S1, 1), batch_seq=0, op=Op.INSERT, write_time_us=1, key={"pk": 1})
    return _Unit([ev] * n, [], ticket=None, upto=upto)  # type: ignore[arg-type]


def test_a_chunk_records_only_the_units_it_completes() -> None:
    """Units of 3, 0 (rejections only), 4 and 2 events written in chunks of 4 rows: a unit split
    over two chunks is recorded with its last one, never half-written."""
    u1, u2, u3, u4 = (_unit(3, {S1: at(S1, 1)}), _unit(0, {S2: at(S2, 2)}),
                      _unit(4, {S1: at(S1, 3), S3: at(S3, 3)}), _unit(2, {S1: at(S1, 4)}))  # fmt: skip
    chunks = completed_positions([u1, u2, u3, u4], 4)
    assert chunks == [
        {S1: at(S1, 1), S2: at(S2, 2)},  # events 0-3: u1 and the empty u2; u3 is not complete
        {S1: at(S1, 3), S2: at(S2, 2), S3: at(S3, 3)},  # events 4-7: u3 complete
        {S1: at(S1, 4), S2: at(S2, 2), S3: at(S3, 3)},  # events 8: u4
    ]
    assert completed_positions([_unit(10, {S1: at(S1, 9)})], 4) == [{}, {}, {S1: at(S1, 9)}]


async def test_resume_from_the_destination_when_redis_lost_or_is_ahead(
    parts: tuple[CheckpointStore, PostgresSink],
) -> None:
    store, sink = parts
    assert records_applied(sink)
    cps = DestinationCheckpoints(store, sink, MAPPING, GROUP, start_ms=GEN - 5)
    assert cps.start_ms == GEN  # never before the generation
    assert await cps.load("pg", GROUP) == {}  # nothing anywhere: the floor applies
    # A write records what it completes; Redis was never saved (FLUSHALL, restart without AOF).
    await cps.writer.write(MAPPING, [], {S1: at(S1, 30), S2: at(S2, 30)})
    assert await store.load("pg", GROUP) == {}
    fresh = DestinationCheckpoints(store, sink, MAPPING, GROUP, start_ms=GEN)
    assert await fresh.load("pg", GROUP) == {S1: at(S1, 30), S2: at(S2, 30)}
    # Redis ahead of the destination (it was restored from a backup with its offsets): the
    # destination's positions, so what it lost is applied again; S3 only in Redis: Redis's.
    await store.save("pg", GROUP, {S1: at(S1, 90), S3: at(S3, 40)})
    assert await fresh.load("pg", GROUP) == {S1: at(S1, 30), S2: at(S2, 30), S3: at(S3, 40)}
    assert await sink.applied_start(MAPPING) == GEN


async def test_a_save_records_in_the_destination_before_redis(
    parts: tuple[CheckpointStore, PostgresSink], monkeypatch: Any
) -> None:
    store, sink = parts
    cps = DestinationCheckpoints(store, sink, MAPPING, GROUP, start_ms=GEN + 7)
    await cps.load("pg", GROUP)
    await cps.writer.write(MAPPING, [], {S1: at(S1, 10)})
    calls: list[dict[bytes, Position]] = []
    original = sink.record_applied

    async def spy(mapping: Any, applied: Any) -> None:
        calls.append(dict(applied.positions))
        await original(mapping, applied)

    monkeypatch.setattr(sink, "record_applied", spy)
    # S1 moved no further than the data write recorded: only S2 (an empty window) is recorded alone.
    await cps.save("pg", GROUP, {S1: at(S1, 10), S2: at(S2, 15)})
    assert calls == [{S2: at(S2, 15)}]
    assert await store.load("pg", GROUP) == {S1: at(S1, 10), S2: at(S2, 15)}
    assert await sink.load_applied(MAPPING, GEN, [S1, S2, S3]) == {S1: at(S1, 10), S2: at(S2, 15)}
    # The destination refuses (down): Redis is not saved either, so it never gets ahead.
    monkeypatch.setattr(sink, "record_applied", _refuse)
    with pytest.raises(RuntimeError, match="down"):
        await cps.save("pg", GROUP, {S2: at(S2, 99)})
    assert (await store.load("pg", GROUP))[S2] == at(S2, 15)
    assert await sink.applied_start(MAPPING) == GEN + 7


async def _refuse(mapping: Any, applied: Any) -> None:
    raise RuntimeError("destination down")
