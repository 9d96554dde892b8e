"""One ``cdcd run`` replicating one random workload into PostgreSQL, ClickHouse and TimescaleDB
at once, ``kill -9``-ed at random moments and restarted each time: afterwards every destination
equals the source field by field (R-04, R-11, R-12, R-13). The source table's clustering column
is a timestamp, so TimescaleDB stores it as a real hypertable spanning many chunks.

The ClickHouse side is compared by ``tests/e2e/compare_ch.py``; a second, short test runs every CQL
type of ``test_types_e2e`` through ``cdcd run`` into ClickHouse, so that comparable form is checked
on every type, not only on the workload's."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest

from tests.e2e.compare import pg_connect, source_schema, wait_converged
from tests.e2e.compare_ch import ch_source_snapshot, wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, ch_ts_destinations
from tests.e2e.test_types_e2e import SCHEMA as TYPES_SCHEMA
from tests.e2e.test_types_e2e import write_all_types
from tests.e2e.workload import Workload

CHANGES = 20_000
MIN_KILLS = 4


@pytest.mark.slow  # ~1 min; part of the default run
async def test_three_destinations_survive_kill9_and_equal_the_source(  # noqa: PLR0917
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, ts_dsn: str, clickhouse_url: str, ch_database: str
) -> None:
    # ck = 2024-01-01 + i * 6 h: 40 rows per partition span 10 days, ~10 one-day chunks.
    workload = Workload(
        cql, "tri.t", seed=2026, partitions=40, rows_per_partition=40, time_ck=dt.timedelta(hours=6)
    )
    workload.create()
    target = f"{ch_database}.t"  # PostgreSQL/TimescaleDB schema, ClickHouse database
    destinations = (
        ch_ts_destinations(clickhouse_url)
        + """
[destinations.ts.hypertables."tri.t"]
time_column = "ck"
chunk_interval = "1d"
"""
    )
    cdcd = make_cdcd(
        [TableSpec("tri.t", target, destinations=("pg", "ch", "ts"))],
        ConfigOptions(
            batch_max_rows=300,
            checkpoint_every=500,
            checkpoint_interval="300ms",
            extra={"destinations": destinations},
        ),
        env={"TS_DSN": ts_dsn},
    )
    cdcd.start()
    cdcd.wait_ready()

    writer = asyncio.create_task(asyncio.to_thread(workload.run, CHANGES, chunk=500))
    rng = random.Random(7)
    kills = mid_stream = 0
    resumes: list[float] = []
    while not writer.done() or kills < MIN_KILLS:
        await asyncio.wait({writer}, timeout=rng.uniform(1.0, 4.0))
        mid_stream += not writer.done()
        cdcd.kill9()
        kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        cdcd.start()
        started = time.monotonic()
        await asyncio.to_thread(cdcd.wait_ready, 60)
        resumes.append(round(time.monotonic() - started, 2))
    result = await writer
    assert result.changes + result.tolerated_errors == CHANGES
    assert mid_stream >= 1, f"only {mid_stream} kills while the workload was writing"

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    schema = source_schema(cql, "tri.t")
    began = time.monotonic()
    pg = await wait_converged(cql, schema, pg_dsn, target, timeout=150, alive=alive)
    ts = await wait_converged(cql, schema, ts_dsn, target, timeout=150, alive=alive)
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        ch = await wait_ch_converged(cql, schema, client, target, timeout=150, alive=alive)
    finally:
        client.close()
    converged = time.monotonic() - began
    assert len(pg.rows) > 100 and len(pg.static) > 5
    assert len(ts.rows) == len(pg.rows) == len(ch.rows)

    # TimescaleDB really stores it as a hypertable on ck, its live rows spread over many chunks.
    conn = await pg_connect(ts_dsn)
    try:
        hypertables = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = $1 AND hypertable_name = 't'",
            ch_database,
        )
        row_chunks = await conn.fetchval(f'SELECT count(DISTINCT tableoid) FROM "{ch_database}".t')
        dims = await conn.fetch(
            "SELECT column_name FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = $1 AND hypertable_name = 't'",
            ch_database,
        )
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = $1 AND hypertable_name = 't'",
            ch_database,
        )
    finally:
        await conn.close()
    assert hypertables == 1, f"{ch_database}.t is not a hypertable"
    assert [r["column_name"] for r in dims] == ["ck"]
    assert chunks > 3, chunks
    assert row_chunks > 3, f"the rows lie in {row_chunks} chunk(s) of {chunks}"

    assert cdcd.stop() == 0, cdcd.log_tail()
    messages = cdcd.log_messages()
    assert not [m for m in messages if "dead-letter" in m.get("message", "")], "events dead-lettered"
    print(f"kills={kills} (mid-stream {mid_stream}) resume-to-ready s={resumes} converged after the writer in {converged:.1f}s "
          f"rows={len(pg.rows)} chunks={chunks} (holding rows: {row_chunks})")  # fmt: skip


async def test_every_cql_type_round_trips_into_clickhouse(
    cql: Any, make_cdcd: MakeCdcd, clickhouse_url: str, ch_database: str
) -> None:
    """Driver -> emulator -> CDC log -> ``cdcd run`` -> ClickHouse, compared with ``FINAL`` field
    by field (docs/type-map-clickhouse.md), hard and soft deletes; ~10 s."""
    for stmt in TYPES_SCHEMA:
        cql.execute(stmt)
    destinations = f'[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'
    cdcd = make_cdcd(
        [
            TableSpec("e2e.types", f"{ch_database}.types", destinations=("ch",)),
            TableSpec("e2e.keys", f"{ch_database}.keys", delete="soft", destinations=("ch",)),
        ],
        ConfigOptions(extra={"destinations": destinations}),
    )
    cdcd.start()
    cdcd.wait_ready()
    write_all_types(cql)

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        for src_table, table, soft in (("e2e.types", "types", False), ("e2e.keys", "keys", True)):
            schema = source_schema(cql, src_table)
            target = f"{ch_database}.{table}"
            snap = await wait_ch_converged(cql, schema, client, target, timeout=60, alive=alive, soft=soft)
            assert snap.rows, f"{src_table}: nothing replicated"
        schema = source_schema(cql, "e2e.types")
        source = ch_source_snapshot(cql, schema)
        for col in schema.regular_columns:
            assert any(r[col.name] is not None for r in source.rows.values()), f"{col.name} never set"
        assert source.static, "static columns not exercised"
        # The limit compare_ch folds away holds exactly: a null collection field of a UDT is stored
        # as an empty Array (ClickHouse has no Nullable(Array)), like an empty one.
        tags = client.query(
            f"SELECT fu.tags FROM `{ch_database}`.types FINAL WHERE fu.street = 'Side St'"
        ).result_rows
        assert tags and all(t == ([],) for t in tags), tags
    finally:
        client.close()
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()
