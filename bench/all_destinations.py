"""One ``cdcd run`` replicating one table into PostgreSQL, ClickHouse and TimescaleDB at once (R-11,
R-12, R-13, R-80, R-82). Not a test: it prints figures.

    python bench/all_destinations.py [--rows 100000] [--update-share 0.15] [--delete-share 0.05]
                                     [--batch-rows 1000] [--only pg,ch,ts] [--clickhouse-url URL]
                                     [--pg-dsn DSN] [--redis-url URL] [--profile F] [--workdir DIR]

1. Source: ``bench.events (pk bigint, ck timestamp, v text, n bigint, PRIMARY KEY (pk, ck))``
   in the Scylla emulator (a child process: ``bench/pg_replication.py``'s ``serve_emulator`` loop
   with one more command, ``mix``). ``--rows`` changes are bulk-loaded into its CDC log
   (``tests.scylla_emulator.bulk.bulk_load``) before cdcd starts, in rounds of 1000: the round's
   INSERTs of new keys, then partial UPDATEs (``n`` only) of random live keys, then row DELETEs of
   random live keys (default mix 80 / 15 / 5 %). ``ck`` = 2024-01-01 + i x ``--ck-step`` for the
   i-th inserted key, 100 keys per partition.
2. ``cdcd run --start-at earliest`` replicates the log into the three destinations at once (one
   pipeline per destination; TimescaleDB stores the table as a hypertable on ``ck``, 1-day chunks).
3. Caught up: ``/status`` is polled every 0.2 s; a destination has caught up when its
   ``events_applied + events_skipped_stale`` (summed over its stream groups; a sink reports a batch
   there only after it committed it) reaches the number of changes loaded. Its events/s are the
   changes divided by the time from its first committed batch (first poll with a non-zero count)
   to that moment, and by the time from process start. Each destination's final state is then
   checked against the state the loader computed: live rows and sum(n) (PostgreSQL/TimescaleDB:
   rows not marked deleted; ClickHouse: ``FINAL``), polled for up to 60 s, or the script fails.
4. Peak RSS (``VmHWM``) and CPU seconds of the cdcd process, then it is stopped (SIGTERM).
5. Raw rates of the same rows in the same run, cdcd stopped: PostgreSQL and TimescaleDB:
   ``pg_replication.raw_copy`` (the replicated table exported, truncated, COPYed back in one COPY
   and in ``--batch-rows``-row COPYs of one transaction each); ClickHouse: the ``FINAL`` rows read
   column-wise, and ``client.insert`` (async clickhouse-connect, Native, column-oriented, types
   given, an ``insert_deduplication_token`` per insert as the sink sends) into a new table of the
   same definition, once and in ``--batch-rows``-row inserts.

The machine may be shared: the load average is printed at start and end; ratios measured in the
same run are the figures to read. Servers (PostgreSQL with timescaledb, redis, ``python -m
tests.clickhouse_server``) are started unless their URL/DSN is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench.pg_replication import (  # noqa: E402
    EmulatorChild,
    cpu_seconds,
    fresh_database,
    postgres_server,
    raw_copy,
    redis_server,
    rss_kib,
    serve_emulator,
)
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, free_port, write_config  # noqa: E402

KS = "bench"
SOURCE = f"{KS}.events"
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
ROUND = 1000  # changes per round of the loader: its inserts, then updates, then deletes
NAMES = {"pg": "PostgreSQL", "ch": "ClickHouse", "ts": "TimescaleDB"}


# ------------------------------------------------------------------------- emulator child side
def load_mix(server: Any, argv: list[str]) -> str:
    """``mix <ks.table> <changes> <update share> <delete share> <ck step s> <seed>``: bulk-load a
    mix of INSERTs (new keys), partial UPDATEs and row DELETEs of live keys. Answers
    ``loaded <changes> <seconds> <inserts> <updates> <deletes> <live rows> <sum(n) of live rows>``."""
    from tests.scylla_emulator.bulk import bulk_load

    table, total = argv[0], int(argv[1])
    upd_share, del_share, step, seed = float(argv[2]), float(argv[3]), float(argv[4]), int(argv[5])
    rng = random.Random(seed)
    parts = max(1, round(total * (1 - upd_share - del_share)) // 100)
    live: list[int] = []  # key indexes of live rows
    where: dict[int, int] = {}  # key index -> position in ``live``
    n_of: dict[int, int] = {}  # key index -> current n
    counts = {"insert": 0, "update": 0, "delete": 0}

    def key(i: int) -> dict[str, Any]:
        return {"pk": i % parts, "ck": T0 + dt.timedelta(seconds=i * step)}

    started = time.perf_counter()
    done = 0
    while done < total:
        k = min(ROUND, total - done)
        n_upd, n_del = round(k * upd_share), round(k * del_share)
        n_ins = k - n_upd - n_del
        first = counts["insert"]
        inserts = [{**key(i), "v": f"value-{i}", "n": i} for i in range(first, first + n_ins)]
        for i in range(first, first + n_ins):
            where[i] = len(live)
            live.append(i)
            n_of[i] = i
        updates: list[dict[str, Any]] = []
        for _ in range(n_upd):
            i = live[rng.randrange(len(live))]
            n_of[i] = -(counts["update"] + len(updates) + 1)
            updates.append({**key(i), "n": n_of[i]})
        deletes: list[dict[str, Any]] = []
        for _ in range(min(n_del, len(live))):
            i = live[rng.randrange(len(live))]
            last = live.pop()  # swap-remove i
            if last != i:
                live[where[i]] = last
                where[last] = where[i]
            del where[i], n_of[i]
            deletes.append(key(i))
        # each call starts at the engine clock, after the previous call's last timestamp
        ops: tuple[tuple[Literal["insert", "update", "delete"], list[dict[str, Any]]], ...] = (
            ("insert", inserts), ("update", updates), ("delete", deletes)
        )  # fmt: skip
        for op, rows in ops:
            if rows:
                server.call(functools.partial(bulk_load, op=op), server.engine, table, rows)
                counts[op] += len(rows)
        done += k
    seconds = time.perf_counter() - started
    return (f"loaded {sum(counts.values())} {seconds:.3f} {counts['insert']} {counts['update']} "
            f"{counts['delete']} {len(live)} {sum(n_of.values())}")  # fmt: skip


# --------------------------------------------------------------------------------- servers
@contextlib.contextmanager
def clickhouse_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """``python -m tests.clickhouse_server`` (chDB behind an HTTP front), as tests/conftest.py
    starts it; yields (url, pid)."""
    port = free_port()
    with (workdir / "clickhouse.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.clickhouse_server", "--host", "127.0.0.1", "--port", str(port),
             "--path", str(workdir / "clickhouse-data")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=1).status == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"ClickHouse endpoint did not start; see {workdir / 'clickhouse.log'}"
                    ) from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def ch_client(url: str) -> Any:
    import clickhouse_connect

    u = urlsplit(url)
    return await clickhouse_connect.get_async_client(
        host=u.hostname, port=u.port or 8123, autogenerate_session_id=False
    )


# ----------------------------------------------------------------------------- measurements
def status_counts(cdcd: CdcdProcess) -> dict[str, int]:
    """Per destination: events_applied + events_skipped_stale of SOURCE, summed over groups."""
    try:
        code, body = cdcd.get("/status")
    except OSError:
        return {}
    if code != 200:
        return {}
    dests = body.get("tables", {}).get(SOURCE, {}).get("destinations", {})
    return {
        name: sum(g.get("events_applied", 0) + g.get("events_skipped_stale", 0) for g in d["groups"].values())
        for name, d in dests.items()
    }


def batch_writes(cdcd: CdcdProcess) -> dict[str, tuple[int, float]]:
    """Per destination: (batches written, seconds inside the sink's write) of SOURCE, from the
    ``cdcd_batch_write_seconds`` histogram of ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{cdcd.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, tuple[int, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cdcd_batch_write_seconds":
            continue
        for s in family.samples:
            if s.labels.get("table") != SOURCE:
                continue
            n, secs = out.get(s.labels["destination"], (0, 0.0))
            if s.name.endswith("_count"):
                n = int(s.value)
            elif s.name.endswith("_sum"):
                secs = float(s.value)
            out[s.labels["destination"]] = (n, secs)
    return out


async def final_state(dest: str, dsn: str | None, ch: Any, target: str) -> tuple[int, int]:
    """(live rows, sum(n)) of the destination table."""
    schema, table = target.split(".")
    if dest == "ch":
        res = await ch.query(f"SELECT count(), sum(n) FROM `{schema}`.`{table}` FINAL")
        count, total = res.result_rows[0]
        return int(count), int(total or 0)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f'SELECT count(*) FILTER (WHERE NOT _cdc_deleted), sum(n) FILTER (WHERE NOT _cdc_deleted) FROM "{schema}"."{table}"'
        )
    finally:
        await conn.close()
    return int(row[0]), int(row[1] or 0)


async def stored_rows(dest: str, dsn: str | None, ch: Any, target: str) -> int:
    """Rows physically in the destination table (tombstones, and in ClickHouse every version)."""
    schema, table = target.split(".")
    if dest == "ch":
        res = await ch.query(f"SELECT count() FROM `{schema}`.`{table}`")
        return int(res.result_rows[0][0])
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{table}"'))
    finally:
        await conn.close()


async def catch_up(
    cdcd: CdcdProcess, dests: list[str], changes: int, limit: float
) -> tuple[float, dict[str, dict[str, float]]]:
    """Start cdcd at the oldest log entry; per destination the monotonic times of its first
    committed batch and of the moment all ``changes`` were applied."""
    started = time.monotonic()
    cdcd.start("--start-at", "earliest")
    times: dict[str, dict[str, float]] = {d: {} for d in dests}
    while any("done" not in t for t in times.values()):
        if not cdcd.running():
            raise SystemExit(f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}")
        if time.monotonic() - started > limit:
            raise SystemExit(f"not caught up within {limit:.0f} s: {status_counts(cdcd)}\n{cdcd.log_tail()}")
        counts = await asyncio.to_thread(status_counts, cdcd)
        now = time.monotonic()
        for d, t in times.items():
            c = counts.get(d, 0)
            if c and "first" not in t:
                t["first"] = now
            if c >= changes and "done" not in t:
                t["done"] = now
                t["cpu"] = cpu_seconds(cdcd.pid)
                t["threads"] = thread_cpu(cdcd.pid)  # type: ignore[assignment]
        await asyncio.sleep(0.2)
    return started, times


async def raw_ch_insert(ch: Any, target: str, batch: int) -> dict[str, float]:
    """``client.insert`` of the ``FINAL`` rows into new tables of the same definition: once, and
    in ``batch``-row inserts (column-oriented, types given, a dedup token per insert)."""
    db, table = target.split(".")
    res = await ch.query(f"SELECT * FROM `{db}`.`{table}` FINAL")
    names, types, columns = list(res.column_names), list(res.column_types), res.result_columns
    rows = len(columns[0]) if columns else 0
    rates: dict[str, float] = {}
    for label, size in (("one", max(rows, 1)), ("batched", batch)):
        raw = f"raw_{label}"
        await ch.command(f"CREATE TABLE `{db}`.`{raw}` AS `{db}`.`{table}`")
        t = time.perf_counter()
        for i in range(0, rows, size):
            await ch.insert(
                raw, [c[i : i + size] for c in columns], database=db, column_names=names,
                column_types=types, column_oriented=True,
                settings={"insert_deduplication_token": f"raw:{label}:{i}"},
            )  # fmt: skip
        rates[f"insert_{label}_rps"] = rows / (time.perf_counter() - t)
        got = await ch.query(f"SELECT count() FROM `{db}`.`{raw}` FINAL")
        if int(got.result_rows[0][0]) != rows:
            plain = await ch.query(f"SELECT count() FROM `{db}`.`{raw}`")
            ddl = await ch.query(f"SHOW CREATE TABLE `{db}`.`{raw}`")
            raise SystemExit(f"raw insert stored {got.result_rows[0][0]} rows ({plain.result_rows[0][0]} without "
                             f"FINAL), not {rows}; {ddl.result_rows[0][0]}")  # fmt: skip
    return rates


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the threads of ``pid``: the main thread (the event loop)
    and each other thread by id, e.g. the Scylla driver's I/O thread, which decodes the wire
    rows and runs the row factory outside the event loop (and outside cProfile)."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        name = "event loop" if task.name == str(pid) else f"thread {task.name}"
        out[name] = (int(fields[11]) + int(fields[12])) / tck
    return out


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------- main
async def run(  # noqa: PLR0917
    args: argparse.Namespace,
    workdir: Path,
    pg_server: str,
    redis_url: str,
    ch_url: str | None,
    ch_pid: int | None,
) -> None:
    from cassandra.cluster import Cluster

    dests = args.only
    schema = f"bench_{uuid.uuid4().hex[:8]}"  # PostgreSQL/TimescaleDB schema, ClickHouse database
    target = f"{schema}.events"
    dsn = {"pg": await fresh_database(pg_server), "ts": await fresh_database(pg_server)}
    if "ts" in dests:
        conn = await asyncpg.connect(dsn["ts"])
        try:
            if not await conn.fetchval(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
            ):
                raise SystemExit("timescaledb is not installed: run `bash deploy/install.sh`")
        finally:
            await conn.close()
    ch = await ch_client(ch_url) if ch_url else None
    emu = EmulatorChild(args.vnodes, workdir / "emulator.log", script=__file__)
    cdcd: CdcdProcess | None = None
    try:
        cluster = Cluster([emu.host], port=emu.port, protocol_version=4)
        session = cluster.connect()
        session.execute(f"CREATE KEYSPACE {KS} WITH replication = "
                        "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}")  # fmt: skip
        session.execute(f"CREATE TABLE {SOURCE} (pk bigint, ck timestamp, v text, n bigint, "
                        "PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}")  # fmt: skip
        cluster.shutdown()

        print(f"bulk-loading {args.rows} changes into the emulator's CDC log ...", flush=True)
        answer = emu.command(
            f"mix {SOURCE} {args.rows} {args.update_share} {args.delete_share} {args.ck_step} {args.seed}"
        )
        if not answer.startswith("loaded "):
            raise SystemExit(f"bulk load failed: {answer}")
        parts = answer.split()
        changes, load_s = int(parts[1]), float(parts[2])
        inserts, updates, deletes, live, sum_n = map(int, parts[3:])
        print(f"  {changes} changes ({inserts} inserts, {updates} partial updates, {deletes} deletes; "
              f"{live} live rows) in {load_s:.1f} s")  # fmt: skip

        extra = ""
        if "ch" in dests:
            extra += f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{ch_url}"\n'
            if args.ch_row_cache:
                extra += f"row_cache_rows = {args.ch_row_cache}\n"
        if "ts" in dests:
            extra += (f'\n[destinations.ts]\ntype = "timescaledb"\ndsn = "${{TS_DSN}}"\npool_size = 2\n'
                      f'\n[destinations.ts.hypertables."{SOURCE}"]\ntime_column = "ck"\nchunk_interval = "1d"\n')  # fmt: skip
        http = free_port()
        config = write_config(
            workdir / "cdcd.toml",
            hosts=[f"{emu.host}:{emu.port}"],
            redis_url=redis_url,
            key_prefix=f"bench{uuid.uuid4().hex[:6]}",
            tables=[TableSpec(SOURCE, target, destinations=tuple(dests))],
            http_port=http,
            options=ConfigOptions(
                confidence_window="1s",
                poll_interval="100ms",
                window="30s",
                generation_poll="15s",
                checkpoint_interval="1s",
                batch_max_rows=args.batch_rows,
                batch_max_wait="100ms",
                extra={"destinations": extra},
            ),
        )
        profile: list[str] = []
        if args.profile and args.profile_clock == "wall":
            profile = ["-m", "cProfile", "-o", args.profile]
        elif args.profile:
            profile = [str(ROOT / "bench" / "cpu_profile.py"), args.profile]
        elif args.gc_stats is not None:
            profile = [str(ROOT / "bench" / "gc_stats.py"), *args.gc_stats.split()]
        cdcd = CdcdProcess(
            config, http_port=http, pg_dsn=dsn["pg"], python_args=profile, env={"TS_DSN": dsn["ts"]}
        )
        print(f"cdcd catching up into {', '.join(NAMES[d] for d in dests)} (start at the oldest log entry) ...",
              flush=True)  # fmt: skip
        emu_cpu0 = cpu_seconds(emu.proc.pid)
        ch_cpu0 = cpu_seconds(ch_pid) if ch_pid else 0.0
        started, times = await catch_up(cdcd, dests, changes, args.timeout)
        emu_cpu = cpu_seconds(emu.proc.pid) - emu_cpu0
        ch_cpu = cpu_seconds(ch_pid) - ch_cpu0 if ch_pid else None

        expected = (live, sum_n)
        state: dict[str, tuple[int, int]] = {}
        for d in dests:
            deadline = time.monotonic() + 60
            while (got := await final_state(d, dsn.get(d), ch, target)) != expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{NAMES[d]}: (live rows, sum(n)) = {got}, expected {expected}")
                await asyncio.sleep(0.5)
            state[d] = got
        cur, peak = rss_kib(cdcd.pid)
        batches = await asyncio.to_thread(batch_writes, cdcd)
        cpu_total = cpu_seconds(cdcd.pid)
        code = cdcd.stop()
        stored = {d: await stored_rows(d, dsn.get(d), ch, target) for d in dests}

        print("raw rates of the same rows ...", flush=True)
        raw: dict[str, dict[str, float]] = {}
        for d in dests:
            if d == "ch":
                raw[d] = await raw_ch_insert(ch, target, args.batch_rows)
            else:
                raw[d] = await raw_copy(dsn[d], stored[d], args.batch_rows, schema=schema, table="events")
    finally:
        if cdcd is not None and cdcd.running():
            cdcd.kill9()
        emu.stop()
        if ch is not None:
            await ch.close()

    end_load = loadavg()
    print()
    at_once = " at once" if len(dests) > 1 else ""
    print(f"cdcd -> {' + '.join(NAMES[d] for d in dests)}{at_once}, {changes:,} changes "
          f"({inserts:,} inserts / {updates:,} partial updates / {deletes:,} deletes -> {live:,} live rows), "
          f"batch {args.batch_rows} rows, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  load average at start {args.start_load}, at end {end_load}")
    for d in dests:
        t = times[d]
        steady = changes / max(t["done"] - t["first"], 1e-9)
        total = changes / (t["done"] - started)
        r = raw[d]
        print(f"  {NAMES[d]}: caught up {t['done'] - started:.1f} s after start "
              f"({t['done'] - t['first']:.1f} s from its first committed batch); rows {state[d][0]:,} live, "
              f"{stored[d]:,} stored")  # fmt: skip
        n_batches, write_s = batches.get(d, (0, 0.0))
        print(f"    {n_batches} batches ({changes / max(n_batches, 1):,.0f} events each on average), "
              f"{1000 * write_s / max(n_batches, 1):,.0f} ms per sink write on average (wall time; the stream "
              f"groups' writes overlap)")  # fmt: skip
        print(f"    {'cdcd, log -> committed rows':44s} {steady:>10,.0f} events/s (first to last commit; "
              f"{total:,.0f}/s from process start)")  # fmt: skip
        if d == "ch":
            one, batched = r["insert_one_rps"], r["insert_batched_rps"]
            print(f"    {'raw client.insert, FINAL rows, one insert':44s} {one:>10,.0f} rows/s")
            print(f"    {f'raw client.insert, {args.batch_rows}-row inserts':44s} {batched:>10,.0f} rows/s")
            print(f"    {'cdcd / raw batched client.insert':44s} {steady / batched:>10.1%}   "
                  f"(target >= 60 %; / one insert: {steady / one:.1%})")  # fmt: skip
        else:
            one, batched = r["copy_one_rps"], r["copy_batched_rps"]
            print(f"    {'raw COPY, same rows, same table, one COPY':44s} {one:>10,.0f} rows/s")
            print(
                f"    {f'raw COPY, {args.batch_rows}-row COPY per transaction':44s} {batched:>10,.0f} rows/s"
            )
            print(
                f"    {'cdcd / raw batched COPY':44s} {steady / batched:>10.1%}   (/ one COPY: {steady / one:.1%})"
            )
    last = max(t["done"] for t in times.values())
    print(f"  all caught up {last - started:.1f} s after start: {changes / (last - started):,.0f} events/s per "
          f"destination, {len(dests) * changes / (last - started):,.0f} destination-events/s")  # fmt: skip
    cpu_done = max(t["cpu"] for t in times.values())
    threads: dict[str, float] = max((t for t in times.values()), key=lambda t: t["cpu"])["threads"]  # type: ignore[assignment]
    ch_part = f", ClickHouse endpoint {ch_cpu:.1f}" if ch_cpu is not None else ""
    print(
        f"  catch-up CPU seconds: cdcd {cpu_done:.1f} (whole run {cpu_total:.1f}), emulator {emu_cpu:.1f}{ch_part}"
    )
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
    print(f"  cdcd CPU seconds per thread at catch-up: {', '.join(f'{n} {c:.1f}' for n, c in busiest)}")
    per_cpu = changes / max(cpu_done, 1e-9)
    print(f"  cdcd CPU per 100k changes (delivered to every destination): {cpu_done * 100_000 / changes:.2f} s; "
          f"{per_cpu:,.0f} changes per CPU-second ({len(dests) * per_cpu:,.0f} destination-events per CPU-second)")  # fmt: skip
    print(
        f"  cdcd peak RSS (VmHWM) {peak / 1024:,.0f} MiB (at the end: {cur / 1024:,.0f} MiB); exit code after SIGTERM {code}"
    )


def destinations(text: str) -> list[str]:
    """``--only``: ``"pg,ch"`` -> ``["pg", "ch"]`` (in pg, ch, ts order, no duplicates)."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - set(NAMES)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(NAMES)}, got {text!r}")
    return [d for d in NAMES if d in names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="changes bulk-loaded before cdcd starts")
    ap.add_argument("--update-share", type=float, default=0.15, help="share of partial UPDATEs")
    ap.add_argument("--delete-share", type=float, default=0.05, help="share of row DELETEs")
    ap.add_argument("--ck-step", type=float, default=10.0, help="seconds between consecutive keys' ck")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=1000, help="pipeline.batch.max_rows and raw batch size")
    ap.add_argument(
        "--only", type=destinations, default=["pg", "ch", "ts"],
        help="replicate into these destinations only: a comma list of pg, ch, ts (e.g. pg,ch)",
    )  # fmt: skip
    ap.add_argument("--ch-row-cache", type=int, default=0, help="ClickHouse row_cache_rows (default 0 = off)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="catch-up timeout, seconds")
    ap.add_argument("--vnodes", type=int, default=8)
    ap.add_argument(
        "--pg-dsn", help="PostgreSQL server DSN with timescaledb (two databases are created in it)"
    )
    ap.add_argument("--redis-url", help="Redis URL (keys under a fresh prefix)")
    ap.add_argument("--clickhouse-url", help="ClickHouse HTTP URL (default: start tests.clickhouse_server)")
    ap.add_argument("--profile", help="run cdcd under cProfile and write the profile to this file")
    ap.add_argument(
        "--profile-clock", choices=["cpu", "wall"], default="wall",
        help="what --profile times: wall time (default, python -m cProfile) or the event loop "
        "thread's CPU time (bench/cpu_profile.py: immune to waiting for a core on a shared machine, "
        "but each timer read is a system call, so call-heavy code is overstated)",
    )  # fmt: skip
    ap.add_argument(
        "--gc-stats", metavar="OPTIONS",
        help="run cdcd under bench/gc_stats.py (its options, e.g. '' or '--freeze'): the CPU time of "
        "its garbage collections is written to cdcd.log at exit",
    )  # fmt: skip
    ap.add_argument("--workdir", help="keep config and logs here (default: a temp dir, removed)")
    ap.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_emulator:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return serve_emulator(args.vnodes, {"mix": load_mix})
    if not 0 <= args.update_share + args.delete_share < 1 or min(args.update_share, args.delete_share) < 0:
        ap.error("--update-share and --delete-share must be >= 0 and leave a share of inserts")
    args.start_load = loadavg()
    if args.profile:
        args.profile = os.path.abspath(args.profile)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cdcd-bench-all-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}; load average {args.start_load}"
    )
    with contextlib.ExitStack() as stack:
        pg = args.pg_dsn or stack.enter_context(postgres_server())
        redis = args.redis_url or stack.enter_context(redis_server(workdir))
        ch_url, ch_pid = args.clickhouse_url, None
        if ch_url is None and "ch" in args.only:
            ch_url, ch_pid = stack.enter_context(clickhouse_server(workdir))
        asyncio.run(run(args, workdir, pg, redis, ch_url, ch_pid))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
