"""The test servers themselves: each fixture gives a real, isolated server."""

from __future__ import annotations

import asyncpg
import clickhouse_connect
import redis.asyncio as aioredis


async def test_postgres_database_is_fresh_and_writable(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        await conn.execute("CREATE TABLE t (k int PRIMARY KEY)")
        await conn.execute("INSERT INTO t VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM t") == 1
    finally:
        await conn.close()


async def test_timescaledb_extension_is_loadable(pg_dsn: str, timescaledb_available: bool) -> None:
    assert timescaledb_available, "timescaledb is not installed: run deploy/install.sh"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await conn.execute("CREATE TABLE m (ts timestamptz NOT NULL, v int)")
        await conn.execute("SELECT create_hypertable('m', by_range('ts'))")
        n = await conn.fetchval("SELECT count(*) FROM timescaledb_information.hypertables")
        assert n == 1
    finally:
        await conn.close()


async def test_redis_keys_round_trip(redis_url: str, redis_prefix: str) -> None:
    r = aioredis.from_url(redis_url)
    try:
        await r.set(f"{redis_prefix}:k", b"v")
        assert await r.get(f"{redis_prefix}:k") == b"v"
    finally:
        await r.aclose()


def test_clickhouse_replacing_merge_tree_final(clickhouse_url: str, ch_database: str) -> None:
    host, port = clickhouse_url.removeprefix("http://").split(":")
    client = clickhouse_connect.get_client(host=host, port=int(port), database=ch_database)
    client.command(
        "CREATE TABLE t (k UInt64, v String, ver UInt64, del UInt8) "
        "ENGINE = ReplacingMergeTree(ver, del) ORDER BY k"
    )
    client.insert("t", [[1, "a", 1, 0], [1, "b", 2, 0], [2, "x", 1, 0], [2, "x", 2, 1]],
                  column_names=["k", "v", "ver", "del"])  # fmt: skip
    assert client.query("SELECT k, v FROM t FINAL ORDER BY k").result_rows == [(1, "b")]
    client.close()


def test_clickhouse_stores_every_block_of_a_large_compressed_insert(
    clickhouse_url: str, ch_database: str
) -> None:
    """clickhouse-connect sends a large insert as several Native blocks (131,072 rows each here),
    each its own lz4 frame; every frame must reach the engine (only the first one did)."""
    host, port = clickhouse_url.removeprefix("http://").split(":")
    client = clickhouse_connect.get_client(host=host, port=int(port), database=ch_database, compress="lz4")
    client.command("CREATE TABLE big (k UInt64, s String) ENGINE = MergeTree ORDER BY k")
    n = 300_000
    client.insert("big", [[i, "row"] for i in range(n)], column_names=["k", "s"])
    assert client.query("SELECT count(), sum(k) FROM big").result_rows == [(n, (n - 1) * n // 2)]
    client.close()
