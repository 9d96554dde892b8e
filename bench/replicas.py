"""cdcd replicas sharing the stream groups: events/s with 1, 2 and 4 replicas, and each replica's CPU.

    python bench/replicas.py [--rows 200000] [--replicas 1,2,4] [--vnodes 16] [--batch-rows 1000]
                             [--pg-dsn DSN] [--redis-url URL] [--workdir DIR]

For each replica count N, on this machine:

1. ``--rows`` INSERTs are bulk-loaded into a fresh table of the emulator (a child process, as in
   ``bench/pg_replication.py``; ``--vnodes`` vnodes x 2 shards: one stream group per vnode);
2. N ``cdcd run --start-at earliest`` processes start at once on one configuration (each its own
   HTTP port and log) and share the groups through their leases;
3. events/s = rows / time from the first committed row to the last (PostgreSQL row count polled
   every 0.25 s), and rows / time from the start of the processes; each replica's CPU seconds
   (user + system, from /proc) and the groups it held at the end; the emulator's CPU.

The replicas start together, so the first to take leases holds every group for a moment and then
hands groups over as the others appear (part of the measured time, as in a real scale-out).
Everything (emulator, PostgreSQL, Redis, the replicas) shares this machine's CPUs: with more
replicas than cores the figures show how the work is split, not a cluster's scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench.pg_replication import (  # noqa: E402
    EmulatorChild,
    cpu_seconds,
    fresh_database,
    serve_emulator,
    with_servers,
)
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, free_port, write_config  # noqa: E402

KS = "rbench"


async def one_run(
    n: int, args: argparse.Namespace, emu: EmulatorChild, *, pg_server: str, redis_url: str, workdir: Path
) -> dict[str, Any]:
    from cassandra.cluster import Cluster

    table = f"{KS}.events{n}"
    cluster = Cluster([emu.host], port=emu.port, protocol_version=4)
    session = cluster.connect()
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
                    "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}")  # fmt: skip
    session.execute(f"CREATE TABLE {table} (pk bigint, ck bigint, v text, n bigint, "
                    "PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}")  # fmt: skip
    cluster.shutdown()
    load_s = emu.load(table, args.rows, max(1, args.rows // 100))
    print(f"  {n} replica(s): loaded {args.rows:,} changes in {load_s:.1f} s", flush=True)
    dsn = await fresh_database(pg_server)
    prefix = f"rbench{uuid.uuid4().hex[:6]}"
    procs: list[CdcdProcess] = []
    for i in range(n):
        d = workdir / f"n{n}-r{i}"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cfg = write_config(
            d / "cdcd.toml", hosts=[f"{emu.host}:{emu.port}"], redis_url=redis_url, key_prefix=prefix,
            tables=[TableSpec(table, "dst.events")], http_port=port,
            options=ConfigOptions(confidence_window="1s", window="30s", generation_poll="15s",
                                  checkpoint_interval="1s", batch_max_rows=args.batch_rows),
        )  # fmt: skip
        procs.append(CdcdProcess(cfg, http_port=port, pg_dsn=dsn))
    emu_cpu = cpu_seconds(emu.proc.pid)
    started = time.monotonic()
    for p in procs:
        p.start("--start-at", "earliest")
    conn = await asyncpg.connect(dsn)
    first = last = None
    count = 0
    try:
        while count < args.rows:
            await asyncio.sleep(0.25)
            for p in procs:
                if not p.running():
                    raise RuntimeError(f"cdcd exited ({p.exit_code()}):\n{p.log_tail()}")
            try:
                count = int(await conn.fetchval("SELECT count(*) FROM dst.events"))
            except asyncpg.UndefinedTableError:
                count = 0
            if count and first is None:
                first = time.monotonic()
            if time.monotonic() - started > args.timeout:
                raise RuntimeError(f"only {count} of {args.rows} rows after {args.timeout} s")
        last = time.monotonic()
    finally:
        await conn.close()
    assert first is not None
    held = []
    for p in procs:
        try:
            held.append(len(p.status()["leases"]))
        except Exception:
            held.append(-1)
    cpus = [cpu_seconds(p.pid) for p in procs]
    for p in procs:
        p.stop()
    return {
        "replicas": n,
        "eps_steady": args.rows / max(last - first, 1e-9),
        "eps_total": args.rows / (last - started),
        "seconds": last - started,
        "cpu": cpus,
        "held": held,
        "emulator_cpu": cpu_seconds(emu.proc.pid) - emu_cpu,
    }


async def run(args: argparse.Namespace, workdir: Path, pg_server: str, redis_url: str) -> None:
    emu = EmulatorChild(args.vnodes, workdir / "emulator.log")
    results = []
    try:
        for n in args.replicas:
            results.append(
                await one_run(n, args, emu, pg_server=pg_server, redis_url=redis_url, workdir=workdir)
            )
    finally:
        emu.stop()
    print()
    print(f"cdcd replicas -> PostgreSQL, {args.rows:,} changes per run, {args.vnodes} stream groups, "
          f"{os.cpu_count()} CPUs on this machine (shared with the emulator, PostgreSQL and Redis)")  # fmt: skip
    print(f"  {'replicas':>8s} {'events/s':>12s} {'incl. start':>12s} {'seconds':>8s}  per-replica CPU s (groups held)  emulator CPU s")  # fmt: skip
    for r in results:
        cpus = ", ".join(f"{c:.1f} ({h})" for c, h in zip(r["cpu"], r["held"], strict=True))
        print(f"  {r['replicas']:>8d} {r['eps_steady']:>12,.0f} {r['eps_total']:>12,.0f} {r['seconds']:>8.1f}  "
              f"{cpus}  {r['emulator_cpu']:.1f}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="changes bulk-loaded per run")
    ap.add_argument("--replicas", default="1,2,4", help="replica counts, comma-separated")
    ap.add_argument("--vnodes", type=int, default=16)
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run before giving up")
    ap.add_argument("--pg-dsn", help="PostgreSQL server DSN (a database is created in it per run)")
    ap.add_argument("--redis-url", help="Redis URL (keys under a fresh prefix per run)")
    ap.add_argument("--workdir", help="keep configs and logs here (default: a temp dir, removed)")
    ap.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_emulator:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return serve_emulator(args.vnodes)
    args.replicas = [int(x) for x in str(args.replicas).split(",") if x.strip()]
    return with_servers(args, "cdcd-replicas-", run)


if __name__ == "__main__":
    sys.exit(main())
