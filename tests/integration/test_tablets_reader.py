"""cdcd.scylla on tablet keyspaces against the emulator through the real driver (scylla-cdc.md §4.5):
discovery by ``system_schema.scylla_keyspaces``, per-table stream sets from ``system.cdc_timestamps``
/ ``system.cdc_streams``, ``tablet_group_size`` groups, a split and a merge followed like generation
switches with every write read exactly once, and vnode and tablet tables side by side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.scylla import ScyllaSession, StreamDiscovery
from tests.integration.test_reader import Collector, readers


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        yield session
    finally:
        await session.aclose()


REPL = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"


async def tablet_table(s: ScyllaSession, ks: str = "tk", table: str = "t", *, tablets: bool = True) -> str:
    await s.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {REPL} "
        f"AND tablets = {{'enabled': {'true' if tablets else 'false'}}}"
    )
    await s.execute(
        f"CREATE TABLE {ks}.{table} (pk int, ck int, v text, PRIMARY KEY (pk, ck)) WITH cdc = {{'enabled': true}}"
    )
    return f"{ks}.{table}"


async def control(s: ScyllaSession, command: str, value: str) -> None:
    stmt = await s.prepare("INSERT INTO emulator.control (command, value) VALUES (?, ?)")
    await s.execute(stmt, [command, value])


async def test_discovery_finds_tablet_stream_sets_per_table(scylla: ScyllaSession) -> None:
    a = await tablet_table(scylla, table="a")
    b = await tablet_table(scylla, table="b")
    vn = await tablet_table(scylla, "vk", "t", tablets=False)
    d = StreamDiscovery(scylla, tablet_group_size=3)
    assert await d.uses_tablets("tk") and not await d.uses_tablets("vk")
    ga = await d.groups(a, since_ms=0, ttl_s=86400)
    gb = await d.groups(b, since_ms=0, ttl_s=86400)
    # 4 tablets (the emulator's default count) in groups of 3, in token order
    assert [len(g.streams) for g in ga] == [3, 1]
    toks = [int.from_bytes(s[:8], "big", signed=True) for g in ga for s in g.streams]
    assert toks == sorted(toks)
    assert not {s for g in ga for s in g.streams} & {s for g in gb for s in g.streams}
    assert ga[0].generation != 0 and all(g.end is None for g in ga + gb)
    assert [g.key for g in ga] == [f"{ga[0].generation}:0", f"{ga[0].generation}:1"]
    # the vnode table beside them: the node's generation, 8 vnode groups of 2 shards
    gv = await d.groups(vn, since_ms=0, ttl_s=86400)
    assert len(gv) == 8 and all(len(g.streams) == 2 for g in gv)
    # a split of table a alone: a's stream sets change, b's and the vnode table's do not
    await scylla.execute(f"ALTER TABLE {a} WITH tablets = {{'min_tablet_count': 8}}")
    assert len(await d.generations(a, fresh=True)) == 2
    assert len(await d.generations(b, fresh=True)) == 1
    assert len(await d.generations(vn, fresh=True)) == 1
    ga2 = await d.groups(a, since_ms=0, ttl_s=86400)
    old, new = ga2[:2], ga2[2:]
    assert all(g.end == new[0].generation for g in old)
    assert [len(g.streams) for g in new] == [3, 3, 2]
    assert await d.next_generation(a, ga[0].generation) == new[0].generation


async def test_split_and_merge_mid_read_lose_and_repeat_nothing(scylla: ScyllaSession) -> None:
    table = await tablet_table(scylla)
    d = StreamDiscovery(scylla, tablet_group_size=2, cache_s=0.1)
    col = Collector()
    written = 0
    restarts: dict[bytes, Any] = {}

    async def write(n: int) -> None:
        nonlocal written
        for _ in range(n):
            await scylla.execute(f"INSERT INTO {table} (pk, ck, v) VALUES ({written % 37}, {written}, 'x')")
            written += 1

    async def follow(until: int) -> None:
        """Read stream set after stream set (like the daemon) until ``until`` events arrived."""
        done_gens: set[int] = set()
        deadline = time.monotonic() + 30
        while len(col.events) < until:
            assert time.monotonic() < deadline, (len(col.events), until)
            groups = [
                g for g in await d.groups(table, since_ms=0, ttl_s=86400) if g.generation not in done_gens
            ]
            gen = groups[0].generation
            current = [g for g in groups if g.generation == gen]
            if current[0].end is None:
                await col.run_until(
                    readers(scylla, d, current), lambda: len(col.events) >= until, start=restarts
                )
                return
            await col.run_until(
                readers(scylla, d, current),
                lambda c=current: all(g.key in col.finished for g in c),  # type: ignore[misc]
                start=restarts,
            )
            done_gens.add(gen)
            restarts.update(col.upto)

    await write(40)
    await follow(40)
    # split to 8 tablets a little in the future; keep writing across it; then merge to 2
    await control(scylla, f"new_stream_set:{table}:8", "500")
    await write(40)
    await asyncio.sleep(0.6)
    await write(40)
    await scylla.execute(f"ALTER TABLE {table} WITH tablets = {{'min_tablet_count': 2}}")
    await write(40)
    restarts.update(col.upto)
    await follow(160)
    assert sorted(e.key["ck"] for e in col.events) == list(range(160))  # none lost, none twice
    assert len(await d.generations(table, fresh=True)) == 3
    # every set's streams were read: the old sets' readers ended at their successors' start
    assert len(col.finished) == 2 + 4  # 4 tablets / 2, then 8 tablets / 2
