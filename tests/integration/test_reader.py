"""cdcd.scylla against the Scylla emulator through the real driver: discovery, windows, restarts,
generation switches, late writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from cdcd.events import ChangeEvent, EventBatch, Op, Position, timeuuid_sort_key, timeuuid_to_micros
from cdcd.scylla import GroupReader, ReaderConfig, ScyllaSession, StreamDiscovery, StreamGroup

FAST = ReaderConfig(
    confidence_window_s=1.0,
    window_s=0.5,
    max_window_s=5.0,
    poll_interval_s=0.1,
    generation_poll_s=0.2,
    fetch_size=7,  # small pages: groups span pages
    retry_initial_s=0.1,
    retry_max_s=0.5,
)


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        yield session
    finally:
        await session.aclose()


async def make_table(
    s: ScyllaSession, ddl_cols: str, *, table: str = "t", cdc: str = "{'enabled': true}"
) -> str:
    await s.execute(
        "CREATE KEYSPACE IF NOT EXISTS ks "
        "WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    await s.execute(f"CREATE TABLE ks.{table} ({ddl_cols}) WITH cdc = {cdc}")
    return f"ks.{table}"


class Collector:
    """Runs a reader per group concurrently; gathers events and the last upto per stream."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []
        self.upto: dict[bytes, Position] = {}
        self.batches: list[tuple[float, EventBatch]] = []
        self.finished: set[str] = set()

    async def _run(self, reader: GroupReader, start: dict[bytes, Position]) -> None:
        async for batch in reader.read(start):
            self.batches.append((time.time(), batch))
            self.events.extend(batch.events)
            self.upto.update(batch.upto)
        self.finished.add(reader.group.key)

    async def run_until(
        self,
        readers: Iterable[GroupReader],
        done: Callable[[], bool],
        start: dict[bytes, Position] | None = None,
        limit_s: float = 30.0,
    ) -> None:
        tasks = [asyncio.create_task(self._run(r, dict(start or {}))) for r in readers]
        try:
            async with asyncio.timeout(limit_s):
                while not done():
                    for t in tasks:
                        if t.done() and t.exception() is not None:
                            raise t.exception()  # type: ignore[misc]
                    await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def readers(s: ScyllaSession, d: StreamDiscovery, groups: list[StreamGroup], **kw: Any) -> list[GroupReader]:
    kw.setdefault("config", FAST)
    return [GroupReader(s, d, g, **kw) for g in groups]


def keys(events: Iterable[ChangeEvent]) -> list[int]:
    return sorted(e.key["pk"] for e in events)


async def test_discovery_lists_vnode_groups_covering_every_log_stream(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int PRIMARY KEY, v int")
    for i in range(50):
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, {i})")
    d = StreamDiscovery(scylla)
    gens = await d.generations(table)
    assert len(gens) == 1
    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    assert len(groups) == 8  # the emulator fixture: 8 vnodes ...
    assert all(
        len(g.streams) == 2 and g.end is None and g.generation == gens[0] for g in groups
    )  # ... 2 shards
    assert len({g.key for g in groups}) == 8
    described = {s for g in groups for s in g.streams}
    logged = {
        r["cdc$stream_id"] for r in await scylla.execute('SELECT "cdc$stream_id" FROM ks.t_scylla_cdc_log')
    }
    assert logged and logged <= described
    assert not await d.uses_tablets("ks")


async def test_reads_every_write_exactly_once_across_windows_and_restarts(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int, ck int, v text, PRIMARY KEY (pk, ck)")
    d = StreamDiscovery(scylla)
    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    for i in range(30):
        await scylla.execute(f"INSERT INTO ks.t (pk, ck, v) VALUES ({i}, 0, 'a{i}')")
    col = Collector()
    rs = readers(scylla, d, groups, start_floor_ms=0)
    await col.run_until(rs, lambda: len(col.events) >= 30)
    assert keys(col.events) == list(range(30))
    assert all(e.op is Op.INSERT and e.values == {"v": f"a{e.key['pk']}"} for e in col.events)

    # More writes while nobody reads, then a restart from the saved positions: only the new ones.
    for i in range(30, 45):
        await scylla.execute(f"UPDATE ks.t SET v = 'b{i}' WHERE pk = {i} AND ck = 1")
    saved = dict(col.upto)
    assert set(saved) == {s for g in groups for s in g.streams}
    col2 = Collector()
    await col2.run_until(
        readers(scylla, d, groups, start_floor_ms=0), lambda: len(col2.events) >= 15, start=saved
    )
    assert keys(col2.events) == list(range(30, 45))
    assert all(e.op is Op.UPDATE for e in col2.events)
    # ...and nothing more arrives while every stream moves past the last write.
    after_us = time.time() * 1e6
    more = Collector()
    await more.run_until(
        readers(scylla, d, groups),
        lambda: (
            len(more.upto) == len(saved)
            and all(timeuuid_to_micros(p.time) > after_us for p in more.upto.values())
        ),
        start=dict(col2.upto),
    )
    assert more.events == []
    assert keys(col2.events) == list(range(30, 45))


async def test_windows_never_pass_the_confidence_window(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int PRIMARY KEY, v int")
    d = StreamDiscovery(scylla)
    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    col = Collector()

    async def writer() -> None:
        for i in range(20):
            await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, {i})")
            await asyncio.sleep(0.05)

    w = asyncio.create_task(writer())
    await col.run_until(readers(scylla, d, groups, start_floor_ms=0), lambda: len(col.events) >= 20)
    await w
    assert keys(col.events) == list(range(20))
    for received_at, batch in col.batches:
        horizon_us = (received_at - FAST.confidence_window_s) * 1e6
        assert all(timeuuid_to_micros(p.time) <= horizon_us for p in batch.upto.values())
        assert all(e.write_time_us <= horizon_us for e in batch.events)
    # per-stream order
    per_stream: dict[bytes, list[Any]] = {}
    for e in col.events:
        per_stream.setdefault(e.pos.stream_id, []).append(timeuuid_sort_key(e.pos.time))
    assert all(v == sorted(v) for v in per_stream.values())


async def test_late_write_inside_the_confidence_window_is_read(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int PRIMARY KEY, v int")
    d = StreamDiscovery(scylla)
    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    config = ReaderConfig(**{**_asdict(FAST), "confidence_window_s": 3.0})
    col = Collector()
    await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 1)")
    tasks_started = time.time()

    async def late_writer() -> None:
        # Wait until the readers have moved windows past the first write, then write "in the past"
        # (but inside the confidence window) with an explicit timestamp.
        while not col.events:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ts = int((time.time() - 1.5) * 1e6)
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES (2, 2) USING TIMESTAMP {ts}")

    w = asyncio.create_task(late_writer())
    await col.run_until(
        readers(scylla, d, groups, start_floor_ms=0, config=config), lambda: len(col.events) >= 2
    )
    await w
    assert keys(col.events) == [1, 2]
    late = next(e for e in col.events if e.key["pk"] == 2)
    assert late.write_time_us / 1e6 > tasks_started - 2.0


async def test_generation_switch_loses_nothing(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int PRIMARY KEY, v int")
    d = StreamDiscovery(scylla)
    old_groups = await d.groups(table, since_ms=0, ttl_s=86400)
    for i in range(20):
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, {i})")
    await scylla.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '2000')")
    new_start = (await d.generations(table, fresh=True))[-1]
    assert len(await d.generations(table)) == 2
    col = Collector()
    # Old-generation readers end by themselves once the new generation started and was read up to.
    await col.run_until(
        readers(scylla, d, old_groups, start_floor_ms=0),
        lambda: len(col.finished) == len(old_groups),
        limit_s=40,
    )
    await asyncio.sleep(max(0.0, new_start / 1000 - time.time()))
    for i in range(20, 40):
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, {i})")
    assert keys(col.events) == list(range(20))
    end_pos = {s: p for s, p in col.upto.items()}
    assert all(timeuuid_to_micros(p.time) == new_start * 1000 for p in end_pos.values())

    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    closed = [g for g in groups if g.generation != new_start]
    opened = [g for g in groups if g.generation == new_start]
    assert closed and all(g.end == new_start for g in closed)
    assert opened and all(g.end is None for g in opened)
    assert not {s for g in opened for s in g.streams} & {s for g in closed for s in g.streams}
    col2 = Collector()
    await col2.run_until(readers(scylla, d, opened, start_floor_ms=0), lambda: len(col2.events) >= 20)
    assert keys(col2.events) == list(range(20, 40))
    assert all(e.pos.generation == new_start for e in col2.events)
    # Since "now": only the new generation's groups.
    assert {g.generation for g in await d.groups(table, since_ms=int(time.time() * 1000), ttl_s=86400)} == {
        new_start
    }


async def test_cancelled_reader_resumes_from_the_last_batch(scylla: ScyllaSession) -> None:
    table = await make_table(scylla, "pk int, ck int, v int, PRIMARY KEY (pk, ck)")
    d = StreamDiscovery(scylla)
    groups = await d.groups(table, since_ms=0, ttl_s=86400)
    # One partition, many groups: all in one stream, read over several pages.
    for i in range(25):
        await scylla.execute(f"INSERT INTO ks.t (pk, ck, v) VALUES (7, {i}, {i})")
    with_rows = [g for g in groups for s in g.streams if await _has_rows(scylla, s)]
    [group] = with_rows
    reader = GroupReader(scylla, d, group, config=FAST, start_floor_ms=0)
    got: list[ChangeEvent] = []
    upto: dict[bytes, Position] = {}
    async for batch in reader.read({}):
        got.extend(batch.events)
        upto.update(batch.upto)
        if got:
            break  # cancel in the middle of a window
    assert 0 < len(got) < 25
    col = Collector()
    await col.run_until(
        [GroupReader(scylla, d, group, config=FAST, start_floor_ms=0)],
        lambda: len(got) + len(col.events) >= 25,
        start=upto,
    )
    assert sorted(e.key["ck"] for e in got + col.events) == list(range(25))


async def _has_rows(s: ScyllaSession, stream: bytes) -> bool:
    stmt = await s.prepare('SELECT "cdc$time" FROM ks.t_scylla_cdc_log WHERE "cdc$stream_id" = ?')
    return bool(await s.execute(stmt, [stream]))


def _asdict(cfg: ReaderConfig) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(cfg)
