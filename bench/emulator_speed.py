"""Speed of the Scylla emulator through the real driver.

    python bench/emulator_speed.py [--rows 20000] [--concurrency 100] [--fetch-size 1000] [--inprocess]

Measures (1) prepared INSERTs/s into a CDC-enabled table with ``execute_concurrent_with_args``
and (2) rows/s served by paging through the CDC log table (and the base table). By default the
emulator runs in a subprocess (``python -m tests.scylla_emulator --port 0``) so that it does not
share the GIL with the driver; ``--inprocess`` embeds ``EmulatorServer`` instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import RoundRobinPolicy
from cassandra.query import SimpleStatement

ROOT = Path(__file__).resolve().parent.parent


def _start_subprocess(stack: ExitStack) -> tuple[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scylla_emulator", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        raise RuntimeError(f"emulator did not start: {line!r}")
    host, _, port = line.removeprefix("listening on ").rpartition(":")
    return host, int(port)


def _start_inprocess(stack: ExitStack) -> tuple[str, int]:
    sys.path.insert(0, str(ROOT))
    from tests.scylla_emulator.server import EmulatorServer

    server = stack.enter_context(EmulatorServer())
    return server.host, server.port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--fetch-size", type=int, default=1000)
    ap.add_argument("--inprocess", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.chdir(ROOT)
    with ExitStack() as stack:
        host, port = (_start_inprocess if args.inprocess else _start_subprocess)(stack)
        profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        cluster = Cluster([host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
        stack.callback(cluster.shutdown)
        session = cluster.connect()
        session.execute(
            "CREATE KEYSPACE bench WITH replication = "
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        session.execute(
            "CREATE TABLE bench.t (pk int, ck int, v text, n bigint, PRIMARY KEY (pk, ck)) "
            "WITH cdc = {'enabled': true}"
        )
        session.execute("CREATE TABLE bench.plain (pk int, ck int, v text, n bigint, PRIMARY KEY (pk, ck))")
        params = [(i % 200, i, f"value-{i}", i * 7) for i in range(args.rows)]
        figures: list[tuple[str, float, int, float]] = []
        for label, table in (("prepared INSERTs (CDC on)", "t"), ("prepared INSERTs (no CDC)", "plain")):
            insert = session.prepare(f"INSERT INTO bench.{table} (pk, ck, v, n) VALUES (?, ?, ?, ?)")
            t0 = time.perf_counter()
            results = execute_concurrent_with_args(session, insert, params, concurrency=args.concurrency)
            write_s = time.perf_counter() - t0
            failed = [r for r in results if not r.success]
            if failed:
                raise RuntimeError(f"{len(failed)} inserts failed, first: {failed[0].result_or_exc!r}")
            figures.append((label, write_s, args.rows, 0))
        for label, table in (("CDC log rows via paging", "t_scylla_cdc_log"), ("base rows via paging", "t")):
            stmt = SimpleStatement(f"SELECT * FROM bench.{table}", fetch_size=args.fetch_size)
            t0 = time.perf_counter()
            count = sum(1 for _ in session.execute(stmt))
            figures.append((label, time.perf_counter() - t0, count, 0))
        mode = "in-process" if args.inprocess else "subprocess"
        print(f"emulator speed ({mode}, {args.rows} rows, concurrency {args.concurrency}, "
              f"fetch_size {args.fetch_size})")  # fmt: skip
        for label, secs, count, _ in figures:
            print(f"  {label:28s} {count:7d} in {secs:6.2f} s = {count / secs:9.0f} /s")
        _check(figures, args.rows)


def _check(figures: list[tuple[str, float, int, Any]], rows: int) -> None:
    counts = [f[2] for f in figures]
    if any(c != rows for c in counts):
        raise SystemExit(f"row counts differ from {rows}: {counts}")


if __name__ == "__main__":
    main()
