"""cdcd -> PostgreSQL replication benchmark (R-80, R-81, R-82). Not a test: it prints figures.

    python bench/pg_replication.py [--rows 1000000] [--rate 1000] [--latency-seconds 30]
                                   [--confidence-window 1s] [--batch-rows 1000]
                                   [--pg-dsn DSN] [--redis-url URL] [--workdir DIR] [--profile F]

One run, on this machine, reports side by side:

1. catch-up throughput: ``--rows`` INSERTs are bulk-loaded into the emulator's CDC log first
   (``tests.scylla_emulator.bulk.bulk_load``), then ``cdcd run --start-at earliest`` replicates them;
   events/s from the log to committed PostgreSQL rows (from the first committed row to the last,
   and from process start);
2. the raw COPY rate of the same rows into the same table: the replicated rows are exported
   (binary COPY TO), the table truncated and the rows COPYed back in one COPY, and in
   ``--batch-rows`` COPYs of one transaction each (what a batch costs without cdcd's logic);
3. peak RSS of the cdcd process (``VmHWM``) and its RSS after catch-up;
4. p50/p95/p99 source-write -> destination-commit latency at a steady ``--rate`` events/s for
   ``--latency-seconds``: a driver writes single-row INSERTs with an explicit ``USING TIMESTAMP``
   (the source write time); a poller reads new rows every 20 ms and records when each became
   visible (commit time, within ~20 ms). The figure includes the confidence window (reads never go
   newer than now - window); it is also shown with the window subtracted (R-81).

Servers: the emulator runs in a child process (this script with ``--serve-emulator``: an
``EmulatorServer`` plus a line protocol on stdin to bulk-load it; ``python -m tests.scylla_emulator``
cannot bulk-load). PostgreSQL (a throwaway cluster, as the test suite starts it) and Redis
(redis-server without persistence) are started too, unless ``--pg-dsn`` / ``--redis-url`` are given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, free_port, write_config  # noqa: E402

KS = "bench"


# ------------------------------------------------------------------------------ emulator child
def serve_emulator(vnodes: int, commands: Mapping[str, Callable[[Any, list[str]], str]] | None = None) -> int:
    """Child mode: run an emulator; stdin lines ``load <ks.table> <rows> <partitions>`` bulk-load
    INSERTs (answer ``loaded <rows> <seconds>``); ``quit`` (or EOF) stops it. ``commands``: more
    line commands (name -> handler(server, arguments) returning the answer line), for other
    benchmarks that run this loop as their own child."""
    from tests.scylla_emulator.bulk import bulk_load
    from tests.scylla_emulator.server import EmulatorServer

    server = EmulatorServer("127.0.0.1", 0, vnodes=vnodes, shards=2)
    server.start()
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if commands and cmd[0] in commands:
                print(commands[cmd[0]](server, cmd[1:]), flush=True)
                continue
            if cmd[0] != "load":
                print(f"error unknown command {cmd[0]}", flush=True)
                continue
            table, n, parts = cmd[1], int(cmd[2]), int(cmd[3])
            started = time.perf_counter()
            done = 0
            while done < n:  # calls of 20k changes, each starting at the engine clock (5 s rule)
                k = min(20_000, n - done)
                base = done
                rows = (
                    {
                        "pk": (base + j) % parts,
                        "ck": (base + j) // parts,
                        "v": f"value-{base + j}",
                        "n": base + j,
                    }
                    for j in range(k)
                )
                server.call(bulk_load, server.engine, table, rows)
                done += k
            print(f"loaded {n} {time.perf_counter() - started:.3f}", flush=True)
    finally:
        server.stop()
    return 0


class EmulatorChild:
    """``script --serve-emulator --vnodes N`` in a child process (``script``: this file, or another
    benchmark whose child mode calls ``serve_emulator`` with more commands)."""

    def __init__(self, vnodes: int, log: Path, script: str | Path = __file__) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--serve-emulator", "--vnodes", str(vnodes)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )  # fmt: skip
        line = self._line()
        if not line.startswith("listening on "):
            raise RuntimeError(f"emulator child said {line!r}; see {log}")
        self.host, _, port = line.removeprefix("listening on ").partition(":")
        self.port = int(port)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"emulator child exited ({self.proc.wait()})")
        return line

    def command(self, line: str) -> str:
        """Send one command line, return the answer line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._line()

    def load(self, table: str, rows: int, partitions: int) -> float:
        line = self.command(f"load {table} {rows} {partitions}")
        if not line.startswith("loaded "):
            raise RuntimeError(f"bulk load failed: {line}")
        return float(line.split()[2])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


# --------------------------------------------------------------------------------- servers
@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found: run `bash deploy/install.sh` or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    from tests.conftest import _PgCluster  # the test suite's throwaway cluster (fsync off)

    cluster = _PgCluster()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


async def fresh_database(server_dsn: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_dsn.rpartition("/")[0] + "/" + name


# ----------------------------------------------------------------------------- measurements
def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    cur = peak = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def applied(cdcd: CdcdProcess, table: str) -> int:
    """events_applied of ``table`` in /status (0 while cdcd is not serving yet)."""
    try:
        code, body = cdcd.get("/status")
    except OSError:
        return 0
    if code != 200:
        return 0
    dest = body.get("tables", {}).get(table, {}).get("destinations", {}).get("pg", {})
    return int(dest.get("events_applied", 0))


async def catch_up(cdcd: CdcdProcess, emulator_pid: int, dsn: str, rows: int) -> dict[str, float]:
    """Start cdcd at the oldest log entry; time until every bulk-loaded row is committed.
    Progress comes from /status (cheap); the row count is checked in PostgreSQL at the end."""
    emu_cpu = cpu_seconds(emulator_pid)
    started = time.monotonic()
    cdcd.start("--start-at", "earliest")
    first = None
    count = 0
    while count < rows:
        if not cdcd.running():
            raise SystemExit(f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}")
        count = await asyncio.to_thread(applied, cdcd, f"{KS}.events")
        if count and first is None:
            first = time.monotonic()
        await asyncio.sleep(0.2)
    done = time.monotonic()
    assert first is not None
    cdcd_cpu = cpu_seconds(cdcd.pid)
    emu_cpu = cpu_seconds(emulator_pid) - emu_cpu
    conn = await asyncpg.connect(dsn)
    try:
        in_pg = await conn.fetchval("SELECT count(*) FROM dst.events")
    finally:
        await conn.close()
    if in_pg != rows:
        raise SystemExit(f"/status reported {count} applied but dst.events holds {in_pg} rows")
    cur, _ = rss_kib(cdcd.pid)
    return {
        "seconds_total": done - started,
        "seconds_from_first_commit": done - first,
        "eps_total": rows / (done - started),
        "eps_steady": rows / max(done - first, 1e-9),
        "rss_after_mib": cur / 1024,
        "cdcd_cpu_s": cdcd_cpu,
        "emulator_cpu_s": emu_cpu,
    }


def paced_writer(host: str, port: int, rate: int, seconds: float, sent: dict[int, int]) -> None:
    """INSERT ``rate`` rows/s into bench.lat, each with USING TIMESTAMP = its send time (µs)."""
    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=port, protocol_version=4)
    session = cluster.connect()
    stmt = session.prepare(f"INSERT INTO {KS}.lat (id, v) VALUES (?, ?) USING TIMESTAMP ?")
    futures = []
    start = time.monotonic()
    total = int(rate * seconds)
    try:
        for i in range(total):
            target = start + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ts = time.time_ns() // 1000
            sent[i] = ts
            futures.append(session.execute_async(stmt, (i, "x", ts)))
            if len(futures) >= 500:
                for f in futures:
                    f.result()
                futures.clear()
        for f in futures:
            f.result()
    finally:
        cluster.shutdown()


def mark_seen(seen: dict[int, int], ids: Iterable[int], at_us: int, low: int) -> int:
    """Record ``at_us`` for ids not seen before; returns the lowest id still unseen (from ``low``)."""
    for i in ids:
        seen.setdefault(i, at_us)
    while low in seen:
        low += 1
    return low


async def poll_visible(
    dsn: str,
    target: str,
    total: int,
    seen: dict[int, int],
    *,
    stop: asyncio.Event | None = None,
    alive: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Every 20 ms, record in ``seen`` when each id of ``target`` (``id bigint``) first became
    visible: the time the query that first returned it was sent (µs). Until ``total`` ids are
    seen, ``stop`` is set, or ``alive()`` raises. Waits for the table to exist first, then calls
    ``on_ready()``."""
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", target):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if on_ready is not None:
            on_ready()
        low = 0
        while len(seen) < total and (stop is None or not stop.is_set()):
            if alive is not None:
                alive()
            now_us = time.time_ns() // 1000
            rows = await conn.fetch(f"SELECT id FROM {target} WHERE id >= $1", low)
            low = mark_seen(seen, (r["id"] for r in rows), now_us, low)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def latency(
    cdcd: CdcdProcess, dsn: str, address: tuple[str, int], rate: int, seconds: float
) -> list[float]:
    """Seconds from source write to visible (committed) PostgreSQL row, one per event."""
    sent: dict[int, int] = {}
    seen: dict[int, int] = {}
    writer = threading.Thread(target=paced_writer, args=(*address, rate, seconds, sent), daemon=True)

    def alive() -> None:
        if not cdcd.running():
            raise SystemExit(f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}")

    stop = asyncio.Event()
    total = int(rate * seconds)
    # The destination table exists once cdcd has created it (ensure_table at start-up).
    poller = asyncio.ensure_future(
        poll_visible(dsn, "dst.lat", total, seen, stop=stop, alive=alive, on_ready=writer.start)
    )
    await asyncio.wait({poller}, timeout=seconds + 60)
    stop.set()
    await poller
    writer.join(timeout=120)
    missing = [i for i in sent if i not in seen]
    if missing:
        print(f"  WARNING: {len(missing)} latency rows never arrived (e.g. ids {missing[:5]})")
    return [(seen[i] - sent[i]) / 1e6 for i in sorted(sent) if i in seen]


async def raw_copy(
    dsn: str, rows: int, batch: int, schema: str = "dst", table: str = "events"
) -> dict[str, float]:
    """COPY the replicated rows (``rows`` of them) back into the same (truncated) table: once,
    and per batch (a TimescaleDB hypertable too)."""
    qualified = f'"{schema}"."{table}"'
    conn = await asyncpg.connect(dsn)
    try:
        buf = io.BytesIO()
        # COPY (SELECT ..): a hypertable's own COPY TO holds only its (empty) parent table
        await conn.copy_from_query(f"SELECT * FROM {qualified}", output=buf, format="binary")
        records = await conn.fetch(f"SELECT * FROM {qualified}")
        columns = list(records[0].keys())
        await conn.execute(f"TRUNCATE {qualified}")
        buf.seek(0)
        t = time.perf_counter()
        await conn.copy_to_table(table, schema_name=schema, source=buf, format="binary")
        one = time.perf_counter() - t
        assert await conn.fetchval(f"SELECT count(*) FROM {qualified}") == rows
        await conn.execute(f"TRUNCATE {qualified}")
        tuples = [tuple(r) for r in records]
        t = time.perf_counter()
        for i in range(0, len(tuples), batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    table, schema_name=schema, records=tuples[i : i + batch], columns=columns
                )
        batched = time.perf_counter() - t
        assert await conn.fetchval(f"SELECT count(*) FROM {qualified}") == rows
    finally:
        await conn.close()
    return {"copy_one_rps": rows / one, "copy_batched_rps": rows / batched}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


# ------------------------------------------------------------------------------------- main
async def run(args: argparse.Namespace, workdir: Path, pg_server: str, redis_url: str) -> None:
    from cassandra.cluster import Cluster

    dsn = await fresh_database(pg_server)
    emu = EmulatorChild(args.vnodes, workdir / "emulator.log")
    cdcd: CdcdProcess | None = None
    try:
        cluster = Cluster([emu.host], port=emu.port, protocol_version=4)
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE {KS} WITH replication = "
                        "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}")  # fmt: skip
        session.execute(f"CREATE TABLE {KS}.events (pk bigint, ck bigint, v text, n bigint, "
                        "PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}")  # fmt: skip
        session.execute(
            f"CREATE TABLE {KS}.lat (id bigint PRIMARY KEY, v text) WITH cdc = {{'enabled': true}}"
        )
        cluster.shutdown()

        print(f"bulk-loading {args.rows} INSERTs into the emulator's CDC log ...", flush=True)
        load_s = emu.load(f"{KS}.events", args.rows, max(1, args.rows // 100))
        print(f"  loaded in {load_s:.1f} s ({args.rows / load_s:,.0f} changes/s)")

        http = free_port()
        config = write_config(
            workdir / "cdcd.toml",
            hosts=[f"{emu.host}:{emu.port}"],
            redis_url=redis_url,
            key_prefix=f"bench{uuid.uuid4().hex[:6]}",
            tables=[TableSpec(f"{KS}.events", "dst.events"), TableSpec(f"{KS}.lat", "dst.lat")],
            http_port=http,
            options=ConfigOptions(
                confidence_window=args.confidence_window,
                poll_interval="100ms",
                window="30s",
                generation_poll="15s",
                checkpoint_interval="1s",
                batch_max_rows=args.batch_rows,
                batch_max_wait="100ms",
            ),
        )
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        cdcd = CdcdProcess(config, http_port=http, pg_dsn=dsn, python_args=profile)
        print("cdcd catching up (start at the oldest log entry) ...", flush=True)
        up = await catch_up(cdcd, emu.proc.pid, dsn, args.rows)
        print(f"  {args.rows} rows committed in {up['seconds_total']:.1f} s")

        print(f"steady load: {args.rate} events/s for {args.latency_seconds:.0f} s ...", flush=True)
        lat = await latency(cdcd, dsn, (emu.host, emu.port), args.rate, args.latency_seconds)
        _, peak = rss_kib(cdcd.pid)
        code = cdcd.stop()

        print("raw COPY of the same rows into the same table ...", flush=True)
        copy = await raw_copy(dsn, args.rows, args.batch_rows)
    finally:
        if cdcd is not None and cdcd.running():
            cdcd.kill9()
        emu.stop()

    window = seconds(args.confidence_window)
    steady = lat[len(lat) // 10 :]  # drop the first 10 % (warm-up)
    print()
    print(f"cdcd -> PostgreSQL, {args.rows:,} changes, batch {args.batch_rows} rows, {os.cpu_count()} CPUs")
    print(f"  {'cdcd catch-up, log -> committed rows':46s} {up['eps_steady']:>12,.0f} events/s "
          f"(first to last commit; {up['eps_total']:,.0f}/s including start-up)")  # fmt: skip
    print(f"  {'raw COPY, same rows, same table, one COPY':46s} {copy['copy_one_rps']:>12,.0f} rows/s")
    print(
        f"  {f'raw COPY, {args.batch_rows}-row COPY per transaction':46s} {copy['copy_batched_rps']:>12,.0f} rows/s"
    )
    print(f"  {'cdcd / raw COPY (one COPY)':46s} {up['eps_steady'] / copy['copy_one_rps']:>12.1%}")
    print(f"  {'catch-up CPU: cdcd / emulator (seconds)':46s} {up['cdcd_cpu_s']:>12.1f} / {up['emulator_cpu_s']:.1f} "
          f"(cdcd alone: {args.rows / max(up['cdcd_cpu_s'], 1e-9):,.0f} events per CPU-second)")  # fmt: skip
    print(
        f"  {'cdcd peak RSS (VmHWM)':46s} {peak / 1024:>12,.0f} MiB (after catch-up: {up['rss_after_mib']:,.0f} MiB)"
    )
    print(f"  latency at {args.rate}/s source write -> destination commit ({len(steady)} events, "
          f"confidence window {window:g} s):")  # fmt: skip
    for p in (50, 95, 99):
        v = pct(steady, p)
        print(f"    p{p:<3d} {v:7.3f} s   (minus window: {v - window:6.3f} s)")
    if steady:
        print(f"    max  {max(steady):7.3f} s   mean {statistics.fmean(steady):.3f} s")
    print(f"  cdcd exit code after SIGTERM: {code}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="changes bulk-loaded for catch-up")
    ap.add_argument("--rate", type=int, default=1000, help="events/s of the latency phase")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--confidence-window", default="1s")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--vnodes", type=int, default=8)
    ap.add_argument("--pg-dsn", help="PostgreSQL server DSN (a database is created in it)")
    ap.add_argument("--redis-url", help="Redis URL (keys under a fresh prefix)")
    ap.add_argument("--profile", help="run cdcd under cProfile and write the profile to this file")
    ap.add_argument("--workdir", help="keep config and logs here (default: a temp dir, removed)")
    ap.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_emulator:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return serve_emulator(args.vnodes)
    if args.profile:
        args.profile = os.path.abspath(args.profile)
    return with_servers(args, "cdcd-bench-", run)


def with_servers(args: argparse.Namespace, prefix: str, run: Any) -> int:
    """``run(args, workdir, pg_dsn, redis_url)`` with throwaway PostgreSQL and Redis servers
    (unless ``--pg-dsn``/``--redis-url`` name running ones) in ``--workdir`` or a temp dir."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pg = args.pg_dsn or stack.enter_context(postgres_server())
        redis = args.redis_url or stack.enter_context(redis_server(workdir))
        asyncio.run(run(args, workdir, pg, redis))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
