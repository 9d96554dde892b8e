"""Callers that connect a sink at the same moment (the /readyz health check and a table's
supervisor, at start-up) share one client: no second PostgreSQL pool, no leaked ClickHouse HTTP
session (it would be reported unclosed when collected)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import asyncpg

from cdcd.sinks.clickhouse import ClickHouseSink
from cdcd.sinks.postgres import PostgresSink
from tests.contract.test_clickhouse_sink import Config as ChConfig
from tests.contract.test_postgres_sink import Config as PgConfig


async def test_postgres_concurrent_connects_open_one_pool(pg_dsn: str) -> None:
    cfg = PgConfig(pg_dsn)
    cfg.pool_size = 1
    sink = PostgresSink("pg", cfg)
    observer = await asyncpg.connect(pg_dsn)
    try:
        await asyncio.gather(sink.connect(), sink.healthcheck(), sink.connect(), sink.healthcheck())
        sessions = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert sessions == 1  # one pool of one connection; two racing pools would hold two
    finally:
        await sink.aclose()
        await observer.close()


async def test_clickhouse_concurrent_connects_share_one_client(clickhouse_url: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
    try:
        sink = ClickHouseSink("ch", ChConfig(clickhouse_url))
        clients: list[Any] = []

        async def connect_and_note() -> None:
            await sink.connect()
            clients.append(sink._client)

        await asyncio.gather(connect_and_note(), sink.healthcheck(), connect_and_note(), sink.healthcheck())
        assert len({id(c) for c in clients}) == 1
        await sink.aclose()
        gc.collect()
        await asyncio.sleep(0)
        assert not [m for m in reported if "Unclosed" in m], reported
    finally:
        loop.set_exception_handler(previous)
