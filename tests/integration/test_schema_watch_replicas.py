"""``SchemaWatcher`` on the emulator and a real Redis: two replicas share one version history and
cache, a change is recorded (and counted) once, a halt is shared and lifted for both."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from cdcd.schema_watch import SchemaStore, SchemaWatcher
from cdcd.schema_watch.watcher import SCHEMA_CHANGES
from cdcd.scylla import ScyllaSession


async def until(cond: Any, what: str = "condition", polls: int = 400) -> None:
    """Poll ``cond()`` every 50 ms (20 s by default)."""
    for _ in range(polls):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached")


async def test_two_replicas_record_a_change_once_and_share_the_halt(
    emulator: Any, redis_url: str, redis_prefix: str
) -> None:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    client = aioredis.Redis.from_url(redis_url)
    tasks: list[asyncio.Task[None]] = []
    try:
        await session.execute(
            "CREATE KEYSPACE sw WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        await session.execute("CREATE TABLE sw.t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
        schema = await session.table_schema("sw", "t")
        watchers = [
            SchemaWatcher(
                session,
                SchemaStore(client, prefix=redis_prefix, cache_ttl=1),
                {"sw.t": ("halt", schema)},
                check_interval=1.0,
                poll=0.1,
                replica=name,
            )
            for name in ("r1", "r2")
        ]
        for w in watchers:
            await w.start()
        assert [w.tables["sw.t"].version for w in watchers] == [1, 1]
        before = SCHEMA_CHANGES.labels("sw.t", "column_added")._value.get()
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        await session.execute("ALTER TABLE sw.t ADD w text")
        await until(lambda: all(w.tables["sw.t"].version == 2 for w in watchers))
        assert (
            SCHEMA_CHANGES.labels("sw.t", "column_added")._value.get() == before + 1
        )  # once, by one replica
        store = watchers[0].store
        history = await store.history("sw.t")
        assert [e.version for e in history] == [2, 1]
        assert [c.describe() for c in history[0].changes] == ["column added w (- -> text)"]
        assert history[0].columns_after == ["pk int", "v int", "w text"]
        halt = await store.halted("sw.t")
        assert halt is not None and halt.version == 2 and "column added w" in halt.reason
        assert all(w.tables["sw.t"].halt == halt for w in watchers)
        assert watchers[1].status()["sw.t"]["halted"]["version"] == 2
        # Resumed through one replica: the other notices from Redis.
        result = await watchers[0].resume("sw.t")
        assert result["was_halted"] is True
        waiter = asyncio.create_task(watchers[1].wait_halted("sw.t", poll=0.1))
        await asyncio.wait_for(waiter, 10)
        assert watchers[1].tables["sw.t"].halt is None
        # Dropped, then created again: two more versions (table_dropped, table_recreated).
        await session.execute("DROP TABLE sw.t")
        await until(lambda: not watchers[0].tables["sw.t"].exists)
        await session.execute("CREATE TABLE sw.t (pk int PRIMARY KEY, x int) WITH cdc = {'enabled': true}")
        await until(lambda: all(w.tables["sw.t"].exists and w.tables["sw.t"].version == 4 for w in watchers))
        kinds = [c.kind for e in await store.history("sw.t") for c in e.changes]
        assert kinds[:4] == ["table_recreated", "column_added", "column_dropped", "column_dropped"], kinds
        assert "table_dropped" in kinds
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await client.aclose()
        await session.aclose()
