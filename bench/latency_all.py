"""Source write -> destination commit latency with PostgreSQL, ClickHouse and TimescaleDB at once.
Not a test: it prints figures.

    python bench/latency_all.py [--rate 1000] [--seconds 30] [--confidence-window 1s]
                                [--only pg,ch,ts] [--workdir DIR]

One ``cdcd run`` replicates ``bench.lat (id bigint PRIMARY KEY, v text)`` into every destination
of ``--only`` at once (one shared reader per stream group, a branch per destination). A driver
writes ``--rate`` single-row INSERTs per second for ``--seconds``, each with an explicit
``USING TIMESTAMP`` = its send time (``bench/pg_replication.py``'s ``paced_writer``). One poller
per destination reads the ids that became visible every 20 ms (PostgreSQL/TimescaleDB: committed
rows; ClickHouse: stored rows) and records, for each, when the query that first returned it was
sent (so a slow poll query does not count as replication time). Latency = visible - written, per
event; the first 10 % are dropped (warm-up). The confidence window (cdcd never reads log rows newer
than now - window) is part of every figure; the target is p95 <= window + 0.5 s.

Servers (emulator child process, PostgreSQL with timescaledb, Redis, the chDB ClickHouse endpoint)
are started as ``bench/all_destinations.py`` starts them. The load average is printed at start
and end: read the figures with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from all_destinations import ch_client, clickhouse_server, destinations, loadavg  # noqa: E402
from pg_replication import (  # noqa: E402
    KS,
    EmulatorChild,
    cpu_seconds,
    fresh_database,
    mark_seen,
    paced_writer,
    pct,
    poll_visible,
    postgres_server,
    redis_server,
    rss_kib,
    seconds,
    serve_emulator,
)

from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, free_port, write_config  # noqa: E402

NAMES = {"pg": "PostgreSQL", "ch": "ClickHouse", "ts": "TimescaleDB"}


async def poll_ch(url: str, target: str, total: int, seen: dict[int, int], stop: asyncio.Event) -> None:
    ch = await ch_client(url)
    try:
        low = 0
        while len(seen) < total and not stop.is_set():
            now_us = time.time_ns() // 1000  # sent: what the answer shows was visible by then
            try:
                result = await ch.query(f"SELECT id FROM {target} WHERE id >= {low}")
            except Exception:  # the table does not exist yet
                await asyncio.sleep(0.1)
                continue
            low = mark_seen(seen, (i for (i,) in result.result_rows), now_us, low)
            await asyncio.sleep(0.02)
    finally:
        await ch.close()


async def run(
    args: argparse.Namespace, workdir: Path, pg_server: str, redis_url: str, ch_url: str | None
) -> None:
    from cassandra.cluster import Cluster

    dests = args.only
    schema = f"lat_{uuid.uuid4().hex[:8]}"
    target = f"{schema}.lat"
    dsn = {"pg": await fresh_database(pg_server), "ts": await fresh_database(pg_server)}
    emu = EmulatorChild(args.vnodes, workdir / "emulator.log", script=__file__)
    cdcd: CdcdProcess | None = None
    try:
        cluster = Cluster([emu.host], port=emu.port, protocol_version=4)
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE {KS} WITH replication = "
                        "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}")  # fmt: skip
        session.execute(
            f"CREATE TABLE {KS}.lat (id bigint PRIMARY KEY, v text) WITH cdc = {{'enabled': true}}"
        )
        cluster.shutdown()
        extra = ""
        if "ch" in dests:
            extra += f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{ch_url}"\n'
        if "ts" in dests:
            extra += '\n[destinations.ts]\ntype = "timescaledb"\ndsn = "${TS_DSN}"\npool_size = 2\n'
        http = free_port()
        config = write_config(
            workdir / "cdcd.toml",
            hosts=[f"{emu.host}:{emu.port}"],
            redis_url=redis_url,
            key_prefix=f"lat{uuid.uuid4().hex[:6]}",
            tables=[TableSpec(f"{KS}.lat", target, destinations=tuple(dests))],
            http_port=http,
            options=ConfigOptions(
                confidence_window=args.confidence_window,
                poll_interval="100ms",
                window="30s",
                generation_poll="15s",
                checkpoint_interval="1s",
                batch_max_rows=1000,
                batch_max_wait="100ms",
                extra={"destinations": extra},
            ),
        )
        cdcd = CdcdProcess(config, http_port=http, pg_dsn=dsn["pg"], env={"TS_DSN": dsn["ts"]})
        cdcd.start()
        cdcd.wait_ready()
        total = int(args.rate * args.seconds)
        sent: dict[int, int] = {}
        seen: dict[str, dict[int, int]] = {d: {} for d in dests}
        stop = asyncio.Event()
        pollers = [
            asyncio.create_task(
                poll_ch(ch_url, target, total, seen[d], stop) if d == "ch" and ch_url
                else poll_visible(dsn[d], target, total, seen[d], stop=stop)
            )
            for d in dests
        ]  # fmt: skip
        cpu0 = cpu_seconds(cdcd.pid)
        print(
            f"steady load: {args.rate} events/s for {args.seconds:.0f} s into {', '.join(dests)} ...",
            flush=True,
        )
        writer = threading.Thread(
            target=paced_writer, args=(emu.host, emu.port, args.rate, args.seconds, sent), daemon=True
        )
        writer.start()
        await asyncio.to_thread(writer.join, args.seconds + 120)
        deadline = time.monotonic() + 60
        while any(len(seen[d]) < total for d in dests) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*pollers, return_exceptions=True)
        cpu = cpu_seconds(cdcd.pid) - cpu0
        _, peak = rss_kib(cdcd.pid)
        code = cdcd.stop()
    finally:
        if cdcd is not None and cdcd.running():
            cdcd.kill9()
        emu.stop()

    window = seconds(args.confidence_window)
    print()
    print(f"latency source write -> destination commit at {args.rate}/s for {args.seconds:.0f} s, "
          f"{len(dests)} destinations at once, confidence window {window:g} s, {os.cpu_count()} CPUs")  # fmt: skip
    for d in dests:
        lat = [(seen[d][i] - sent[i]) / 1e6 for i in sorted(sent) if i in seen[d]]
        steady = lat[len(lat) // 10 :]
        missing = len(sent) - len(lat)
        if not steady:
            print(f"  {NAMES[d]:12s} no events arrived")
            continue
        p50, p95, p99 = (pct(steady, p) for p in (50, 95, 99))
        verdict = "met" if p95 <= window + 0.5 else "NOT met"
        print(f"  {NAMES[d]:12s} p50 {p50:6.3f} s  p95 {p95:6.3f} s  p99 {p99:6.3f} s  max {max(steady):6.3f} s  "
              f"mean {statistics.fmean(steady):.3f} s  (p95 <= window + 0.5 s: {verdict}"
              f"{f'; {missing} never arrived' if missing else ''})")  # fmt: skip
    print(f"  cdcd CPU {cpu:.1f} s for {len(sent)} changes ({cpu / max(len(sent), 1) * 1e5:.1f} s per 100k); "
          f"peak RSS {peak / 1024:.0f} MiB; exit code {code}")  # fmt: skip
    print(f"load average at start {args.start_load}, at end {loadavg()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000, help="events/s written to the source")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the steady load lasts")
    ap.add_argument("--confidence-window", default="1s")
    ap.add_argument("--only", type=destinations, default=["pg", "ch", "ts"], help="comma list of pg, ch, ts")
    ap.add_argument("--workdir", help="keep config and logs here (default: a temp dir, removed)")
    ap.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vnodes", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_emulator:
        return serve_emulator(args.vnodes)
    args.start_load = loadavg()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cdcd-bench-lat-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}; load average {args.start_load}"
    )
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_server())
        redis = stack.enter_context(redis_server(workdir))
        ch_url = stack.enter_context(clickhouse_server(workdir))[0] if "ch" in args.only else None
        asyncio.run(run(args, workdir, pg, redis, ch_url))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
