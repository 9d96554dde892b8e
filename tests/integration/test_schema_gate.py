"""``SchemaGate`` when Redis holds no applied schema (first start, or Redis lost its state) and the
destination table already exists, on a real PostgreSQL and Redis: under ``log`` the table is not
altered and new columns are left out; under ``halt`` a table whose destination lacks source columns
halts again (the static side table's columns do not count as lacking); ``propagate`` adds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cdcd.schema_watch import SchemaStore, SchemaWatcher
from cdcd.schema_watch.gate import SchemaGate
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from tests.contract.builders import PgConfig, schema

BEFORE = [
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("s", "text", "static"),
    ("a", "text", "regular"),
]
AFTER = [*BEFORE, ("w", "int", "regular")]
MAPPING = TableMapping(source="ks.t", target_schema="gate", target_table="t")


@pytest.fixture
async def parts(redis_url: str, pg_dsn: str) -> AsyncIterator[tuple[PostgresSink, aioredis.Redis]]:
    sink = PostgresSink("pg", PgConfig(pg_dsn))
    await sink.connect()
    await sink.ensure_table(MAPPING, schema(BEFORE))  # the table as an earlier run left it
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield sink, client
    finally:
        await client.aclose()
        await sink.aclose()


async def _gate(parts: tuple[PostgresSink, aioredis.Redis], prefix: str, policy: Any) -> SchemaGate:
    sink, client = parts
    watcher = SchemaWatcher(None, SchemaStore(client, prefix=prefix), {"ks.t": (policy, schema(AFTER))})
    return SchemaGate(
        watcher=watcher,
        table="ks.t",
        destination="pg",
        sink=sink,
        mapping=MAPPING,
        redis=client,
        prefix=prefix,
    )


async def _columns(sink: PostgresSink) -> set[str]:
    return set((await sink.target_definition(MAPPING)).columns)


@pytest.mark.parametrize("policy", ["log", "halt", "propagate"])
async def test_without_an_applied_schema_the_destination_says_what_it_is_at(
    parts: tuple[PostgresSink, aioredis.Redis], redis_prefix: str, policy: str
) -> None:
    gate = await _gate(parts, redis_prefix, policy)
    await gate.ensure()
    watch = gate.watcher.tables["ks.t"]
    columns = await _columns(parts[0])
    assert gate.applied is not None
    if policy == "propagate":
        assert "w" in columns and watch.halt is None
        return
    assert "w" not in columns  # not altered
    assert [c.name for c in gate.applied.columns] == ["pk", "ck", "s", "a"]
    if policy == "halt":
        assert watch.halt is not None and "['w']" in watch.halt.reason  # not 's': it lives in t_static
    else:
        assert watch.halt is None
