"""``cdcd snapshot`` against the emulator, PostgreSQL and Redis: rows with their write times."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cassandra.cluster import Cluster

from cdcd.config import load
from cdcd.snapshot.commands import snapshot_command
from tests.e2e.harness import PG_ENV, TableSpec, free_port, write_config


@pytest.fixture
def cql(emulator: Any) -> Any:
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    session = cluster.connect()
    yield session
    cluster.shutdown()


async def test_snapshot_copies_rows_with_write_times(
    emulator: Any, cql: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cql.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, b int, s set<int>, PRIMARY KEY (p, c))")
    for p in range(20):
        for c in range(3):
            cql.execute(
                "INSERT INTO ks.t (p, c, a, b, s) VALUES (%s, %s, %s, %s, {1, 2}) USING TIMESTAMP 1000",
                (p, c, f"v{p}", c),
            )
    cql.execute("UPDATE ks.t USING TIMESTAMP 2000 SET b = 99 WHERE p = 1 AND c = 1")
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")  # the log holds none of these rows
    monkeypatch.setenv(PG_ENV, pg_dsn)
    path = write_config(
        tmp_path / "cdcd.toml", hosts=[f"{emulator.host}:{emulator.port}"], redis_url=redis_url,
        key_prefix=redis_prefix, tables=[TableSpec("ks.t", "public.t")], http_port=free_port(),
    )  # fmt: skip
    cfg = load(path)
    code = await snapshot_command(cfg, table="ks.t", ranges=8)
    assert code == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT p, c, a, b, s, _cdc_write_time FROM public.t ORDER BY p, c")
    finally:
        await conn.close()
    assert len(rows) == 60
    r = next(r for r in rows if r["p"] == 1 and r["c"] == 1)
    assert (r["a"], r["b"], list(r["s"]), r["_cdc_write_time"]) == ("v1", 99, [1, 2], 2000)
    # finished: a second run does nothing and says so
    assert await snapshot_command(cfg, table="ks.t", ranges=8) == 0



async def test_reconcile_reports_and_repairs_postgres(
    emulator: Any, cql: Any, pg_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import json

    from cdcd.snapshot.reconcile import reconcile_command

    cql.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, b int, PRIMARY KEY (p, c))")
    for p in range(30):
        cql.execute("INSERT INTO ks.t (p, c, a, b) VALUES (%s, 0, %s, %s)", (p, f"v{p}", p))
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")
    monkeypatch.setenv(PG_ENV, pg_dsn)
    path = write_config(
        tmp_path / "cdcd.toml", hosts=[f"{emulator.host}:{emulator.port}"], redis_url=redis_url,
        key_prefix=redis_prefix, tables=[TableSpec("ks.t", "public.t", delete="soft")], http_port=free_port(),
    )  # fmt: skip
    cfg = load(path)
    assert await snapshot_command(cfg, table="ks.t", ranges=4, quiet=True) == 0
    capsys.readouterr()
    assert await reconcile_command(cfg, table="ks.t", as_json=True, ranges=4, settle=1, quiet=True) == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("DELETE FROM public.t WHERE p = 3")
        await conn.execute("UPDATE public.t SET a = 'tampered' WHERE p = 5")
        await conn.execute("UPDATE public.t SET _cdc_deleted = true WHERE p = 7")
        await conn.execute(
            "INSERT INTO public.t (p, c, a, b, _cdc_write_time, _cdc_batch_seq, _cdc_row_marker) "
            "VALUES (100, 0, 'extra', 1, 5, 0, true)"
        )
        capsys.readouterr()
        code = await reconcile_command(cfg, table="ks.t", as_json=True, ranges=4, settle=1, quiet=True)
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert code == 1
        *rows, summary = lines
        assert {(r["result"], r["key"]["p"]) for r in rows} == {
            ("missing", 3), ("missing", 7), ("different", 5), ("extra", 100)
        }
        assert next(r for r in rows if r["result"] == "different")["columns"] == ["a"]
        assert (summary["missing"], summary["extra"], summary["different"], summary["rows_compared"]) == (2, 1, 1, 30)
        code = await reconcile_command(cfg, table="ks.t", as_json=True, repair=True, ranges=4, settle=1, quiet=True)
        assert code == 0, capsys.readouterr()
        capsys.readouterr()
        assert await reconcile_command(cfg, table="ks.t", as_json=True, ranges=4, settle=1, quiet=True) == 0
        summary = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert (summary["missing"], summary["extra"], summary["different"]) == (0, 0, 0)
        assert await conn.fetchval("SELECT a FROM public.t WHERE p = 5") == "v5"
    finally:
        await conn.close()
