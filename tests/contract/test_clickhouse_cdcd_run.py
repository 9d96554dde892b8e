"""``cdcd run`` (the real daemon process) replicating into ClickHouse: every CQL type, a random
workload, a SIGTERM restart and a ``kill -9`` restart; the replica equals the source field by field
(comparison helpers of test_clickhouse_e2e)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cdcd.scylla import ScyllaSession
from tests.contract.test_clickhouse_e2e import DDL, _replica, _source, _tail, _workload
from tests.e2e.harness import CdcdProcess, TableSpec, free_port, write_config


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        await session.execute(
            "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        await session.execute("CREATE TYPE ks.ut (a int, b text)")
        await session.execute(DDL)
        yield session
    finally:
        await session.aclose()


def _config(
    tmp: Path, emulator: Any, *, redis_url: str, prefix: str, clickhouse_url: str, db: str
) -> tuple[Path, int]:
    port = free_port()
    cfg = write_config(
        tmp / "cdcd.toml", hosts=[f"{emulator.host}:{emulator.port}"], redis_url=redis_url, key_prefix=prefix,
        tables=[TableSpec(source="ks.t", target=f"{db}.t", delete="soft")], http_port=port,
    )  # fmt: skip
    text = cfg.read_text().replace('destinations = ["pg"]', 'destinations = ["ch"]')
    text += f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'
    cfg.write_text(text)
    return cfg, port


async def test_cdcd_run_replicates_into_clickhouse_across_restarts(  # noqa: PLR0917
    tmp_path: Path, emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str, pg_dsn: str,
    clickhouse_url: str, ch: Any, ch_database: str,
) -> None:  # fmt: skip
    cfg, port = _config(
        tmp_path,
        emulator,
        redis_url=redis_url,
        prefix=redis_prefix,
        clickhouse_url=clickhouse_url,
        db=ch_database,
    )
    proc = CdcdProcess(cfg, http_port=port, pg_dsn=pg_dsn)
    sch = await scylla.table_schema("ks", "t")

    async def converge() -> None:
        want = await _source(scylla, sch)
        got: Any = None
        async with asyncio.timeout(90):
            while (got := await _replica(ch, ch_database, sch, True)) != want:
                assert proc.running(), proc.log_tail()
                await asyncio.sleep(0.3)
        assert got == want

    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await _workload(scylla, seed=31, n=120)
        await converge()
        assert await asyncio.to_thread(proc.stop) == 0  # SIGTERM drains and exits 0
        await _workload(scylla, seed=32, n=60)  # while cdcd is down
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await _tail(scylla)
        await converge()
        proc.kill9()  # a crash: replay from the last checkpoint
        await _workload(scylla, seed=33, n=60)
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await converge()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(proc.stop, 30)
        proc.kill9()
        print(proc.log_tail(80))
