"""``/admin/dlq/...`` and ``DlqTool`` on a real Redis and PostgreSQL (cdcd.app.dlq, dlq_http):
the admin token, list/show/edit/retry/drop, a column type override at table creation, and
``on_invalid = "quarantine_key"`` holding later changes of a refused key back on retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from cdcd.app.dlq import DlqTool
from cdcd.app.dlq_http import dlq_routes
from cdcd.config import Secret, TableConfig, loads
from cdcd.events import Op
from cdcd.ops.http import CheckResult, HttpServer, make_app
from cdcd.sinks import Sink
from cdcd.sinks.postgres import PostgresSink
from cdcd.state.deadletter import DeadLetterStore
from tests.contract.builders import ev, schema

TOKEN = "dlq-secret"
CONFIG = """
[destinations.pg]
type = "postgres"
dsn = "${PG_DSN}"

[[tables]]
source = "ks.t"
destinations = ["pg"]
on_invalid = "quarantine_key"
[tables.columns.name]
types = { pg = "varchar(3)" }
"""
SCHEMA = schema([("id", "int", "partition_key"), ("name", "text", "regular")])


@pytest.fixture
async def served(pg_dsn: str, redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[str, DlqTool, str]]:
    cfg = loads(CONFIG, env={"PG_DSN": pg_dsn})
    client = aioredis.Redis.from_url(redis_url)
    store = DeadLetterStore(client, prefix=redis_prefix)
    pg = PostgresSink("pg", cfg.destinations["pg"])

    async def sink(dest: str) -> Sink:
        await pg.connect()
        return pg

    async def source_schema(table: TableConfig) -> Any:
        return SCHEMA

    tool = DlqTool(cfg, store, sink=sink, schema=source_schema)

    async def tool_() -> DlqTool:
        return tool

    async def ready() -> dict[str, CheckResult]:
        return {}

    app = make_app(status=lambda: {}, ready=ready, registries=[], admin_token=Secret(TOKEN),
                   extra_routes=dlq_routes(tool_))  # fmt: skip
    server = HttpServer(app, "127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", tool, pg_dsn
    finally:
        await server.aclose()
        await pg.aclose()
        await client.aclose()


async def test_admin_dlq_round_trip(served: tuple[str, DlqTool, str]) -> None:
    url, tool, dsn = served
    store = tool.store
    bad = ev(Op.INSERT, {"id": 1}, values={"name": "toolong"})
    later = ev(Op.UPDATE, {"id": 1}, values={"name": "abc"})  # held behind it (quarantine_key)
    other = ev(Op.INSERT, {"id": 2}, values={"name": "long"})
    entries = [
        DeadLetterStore.make("validation", "pg", bad, reason="too long", stage="validate", attempts=0,
                             first_failed_at=1.0, columns=["name"], rule="max_length"),
        DeadLetterStore.make("validation", "pg", later, reason="held", stage="validate", attempts=0,
                             first_failed_at=2.0, columns=["id"], rule="quarantine"),
        DeadLetterStore.make("validation", "pg", other, reason="too long", stage="validate", attempts=0,
                             first_failed_at=3.0, columns=["name"], rule="max_length"),
    ]  # fmt: skip
    await store.add(entries)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/admin/dlq") as r:
            assert r.status == 401
        async with http.get(f"{url}/admin/dlq", params={"destination": "pg"}, headers=auth) as r:
            listed = (await r.json())["entries"]
        assert [e["key"] for e in listed] == [{"id": 1}, {"id": 1}, {"id": 2}]
        ids = [e["id"] for e in listed]
        assert ids[0].startswith("validation/pg/ks.t/")
        async with http.get(f"{url}/admin/dlq", params={"queue": "nope"}, headers=auth) as r:
            assert r.status == 400 and "queue must be" in (await r.json())["error"]

        # Retrying the key's entries as they are: the first is refused again (varchar(3), the
        # override cdcd created the column with), so the held one behind it stays held.
        async with http.post(f"{url}/admin/dlq/retry", json={"ids": ids[:2]}, headers=auth) as r:
            result = await r.json()
        assert list(result["refused"]) == [ids[0]] and "varying(3)" in result["refused"][ids[0]]
        assert result["held"] == [ids[1]]
        async with http.get(f"{url}/admin/dlq/entry", params={"id": ids[0]}, headers=auth) as r:
            assert (await r.json())["attempts"] == 1

        # Corrected, the first applies; then the held change applies after it.
        async with http.post(
            f"{url}/admin/dlq/edit", json={"id": ids[0], "set": {"name": "ok"}}, headers=auth
        ) as r:
            assert (await r.json())["applied"] == [ids[0]]
        async with http.post(f"{url}/admin/dlq/retry", json={"ids": [ids[1]]}, headers=auth) as r:
            assert (await r.json())["applied"] == [ids[1]]
        async with http.post(
            f"{url}/admin/dlq/edit", json={"id": ids[2], "set": {"id": "7"}}, headers=auth
        ) as r:
            assert r.status == 400 and "primary key" in (await r.json())["error"]
        async with http.post(
            f"{url}/admin/dlq/drop", json={"all": True, "destination": "pg"}, headers=auth
        ) as r:
            assert (await r.json())["dropped"] == 1
        async with http.get(f"{url}/admin/dlq/entry", params={"id": ids[2]}, headers=auth) as r:
            assert r.status == 404
    conn = await asyncpg.connect(dsn)
    try:
        assert [tuple(r) for r in await conn.fetch("SELECT id, name FROM ks.t")] == [(1, "abc")]
        assert (
            await conn.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ks.t'::regclass "
                "AND attname = 'name'"
            )
            == "character varying(3)"
        )
    finally:
        await conn.close()
