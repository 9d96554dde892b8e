"""The destinations' version guards end to end (R-22), through the emulator and a real ``cdcd run``:

* ``staleness = "version"``: a row written with ``rev = 5`` then again with ``rev = 3`` (a later
  write time) keeps ``rev = 5`` in PostgreSQL and ClickHouse; the lower version is in the
  staleness audit of each destination with both write times and the row's version, and counted
  as ``cdcd_events_skipped_total{reason="stale"}``;
* the timestamp strategy: a second ``cdcd run`` that lost its checkpoints (Redis and the
  destination's offsets table) re-reads the log from the start. The write the row already holds
  is a replay: counted as ``reason="duplicate"``, not audited.

(Stale events under the timestamp strategy need a resubmission: a CDC stream is ordered by write
time, so the log itself never yields one; tests/contract/test_staleness_sinks.py covers them.)
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import clickhouse_connect
import redis
import redis.asyncio as aioredis

from cdcd.state import DeadLetter, DeadLetterStore
from tests.e2e.compare import pg_connect
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, wait_for


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def pg_rows(dsn: str, table: str) -> dict[int, tuple[Any, ...]]:
    conn = await pg_connect(dsn)
    try:
        recs = await conn.fetch(f"SELECT * FROM {table}")
        cols = [c for c in ("v", "rev") if recs and c in recs[0].keys()]  # noqa: SIM118 (Record: values)
        return {r["id"]: tuple(r[c] for c in cols) for r in recs}
    except Exception:  # not created yet
        return {}
    finally:
        await conn.close()


def ch_rows(url: str, db: str) -> dict[int, tuple[Any, ...]]:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    client = clickhouse_connect.get_client(host=host, port=int(port))
    try:
        q = client.query(f"SELECT id, v, rev FROM `{db}`.`ver` FINAL WHERE _cdc_is_deleted = 0")
        return {r[0]: (r[1], r[2]) for r in q.result_rows}
    except Exception:  # not created yet
        return {}
    finally:
        client.close()


async def audit(redis_url: str, prefix: str, dest: str, wait: float = 0.0) -> list[DeadLetter]:
    """The staleness audit of ``dest``; ``wait``: poll up to that long for a first entry (the
    writer records it right after the write that made the rows visible)."""
    client = aioredis.Redis.from_url(redis_url)
    deadline = time.monotonic() + wait
    try:
        while True:
            entries = await DeadLetterStore(client, prefix=prefix).list("stale", dest)
            if entries or time.monotonic() >= deadline:
                return entries
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_version_strategy_and_replays_through_cdcd_run(  # noqa: PLR0917
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, clickhouse_url: str, ch_database: str, redis_url: str,
    redis_prefix: str,
) -> None:  # fmt: skip
    cql.execute(
        "CREATE KEYSPACE st WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    cql.execute("CREATE TABLE st.ver (id int PRIMARY KEY, rev bigint, v text) WITH cdc = {'enabled': true}")
    cql.execute("CREATE TABLE st.ts (id int PRIMARY KEY, v text) WITH cdc = {'enabled': true}")
    db = ch_database
    options = ConfigOptions(
        extra={"destinations": f'[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'}
    )
    tables = [
        TableSpec("st.ver", f"{db}.ver", destinations=("pg", "ch"),
                  extra='staleness = "version"\nversion_column = "rev"\n'),
        TableSpec("st.ts", f"{db}.ts"),
    ]  # fmt: skip
    cdcd = make_cdcd(tables, options)
    cdcd.start()
    cdcd.wait_ready()
    high_us = int(time.time() * 1e6)
    cql.execute(f"INSERT INTO st.ver (id, rev, v) VALUES (1, 5, 'high') USING TIMESTAMP {high_us}")
    # a later write with a lower version
    cql.execute(f"INSERT INTO st.ver (id, rev, v) VALUES (1, 3, 'low') USING TIMESTAMP {high_us + 50_000}")
    cql.execute("INSERT INTO st.ver (id, rev, v) VALUES (2, 1, 'other')")  # marks the end
    new_us = int(time.time() * 1e6)
    cql.execute(f"INSERT INTO st.ts (id, v) VALUES (1, 'new') USING TIMESTAMP {new_us}")

    def done() -> bool:
        pg_ok = asyncio.run(pg_rows(pg_dsn, f"{db}.ver")).get(2) is not None
        ts_ok = asyncio.run(pg_rows(pg_dsn, f"{db}.ts")).get(1) is not None
        return pg_ok and ts_ok and ch_rows(clickhouse_url, db).get(2) is not None

    await asyncio.to_thread(wait_for, done, 60, "the rows in PostgreSQL and ClickHouse")
    assert (await pg_rows(pg_dsn, f"{db}.ver"))[1] == ("high", 5), cdcd.log_tail()
    assert ch_rows(clickhouse_url, db)[1] == ("high", 5)

    for dest in ("pg", "ch"):
        (entry,) = await audit(redis_url, redis_prefix, dest, wait=10.0)
        assert (entry.destination, entry.table, entry.stage, entry.event.key) == (
            dest,
            "st.ver",
            "version-guard",
            {"id": 1},
        )
        assert entry.event.values["rev"] == 3
        assert f"({entry.event.write_time_us} us)" in entry.reason
        assert "destination row written at " in entry.reason and "destination row version 5" in entry.reason
        assert entry.reason.startswith("stale: event written at ")
    text = await asyncio.to_thread(metrics, cdcd.http_port)
    for dest in ("pg", "ch"):
        assert (
            f'cdcd_events_skipped_total{{destination="{dest}",reason="stale",replica="e2e",table="st.ver"}} 1.0'
            in text
        ), text
    assert cdcd.stop() == 0, cdcd.log_tail()

    # A run that lost its checkpoints (Redis and the destination's offsets table) re-reads the log.
    r = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in r.scan_iter(f"{redis_prefix}:*") if b":dlq:" not in k]
        r.delete(*keys)
    finally:
        r.close()
    conn = await pg_connect(pg_dsn)
    try:
        await conn.execute(f'DROP TABLE "{db}".cdcd_offsets')
    finally:
        await conn.close()
    again = make_cdcd([TableSpec("st.ts", f"{db}.ts")], options)
    again.start("--start-at", "earliest")
    again.wait_ready()
    dup = 'cdcd_events_skipped_total{destination="pg",reason="duplicate",replica="e2e",table="st.ts"} 1.0'

    def replayed() -> bool:
        return dup in metrics(again.http_port)

    await asyncio.to_thread(wait_for, replayed, 60, "the replayed write counted as a duplicate")
    text = await asyncio.to_thread(metrics, again.http_port)
    assert 'reason="stale",replica="e2e",table="st.ts"' not in text
    assert [e.table for e in await audit(redis_url, redis_prefix, "pg")] == ["st.ver"]  # not audited
    assert (await pg_rows(pg_dsn, f"{db}.ts"))[1] == ("new",)
    assert again.stop() == 0, again.log_tail()
