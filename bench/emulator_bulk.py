"""Bulk-load and log-read speed of the Scylla emulator engine (in process, no driver, no protocol).

    python bench/emulator_bulk.py [--changes 200000] [--partitions 1000] [--call-size 20000]
                                  [--page-size 1000] [--window-s 30] [--profile FILE]

Prints, one line each:

* changes/s of ``bulk.bulk_load`` into a CDC-enabled table (``--changes`` single-row INSERTs, then
  ``--changes // 4`` UPDATEs of one column and ``--changes // 4`` row DELETEs) and into the same
  table without CDC (INSERTs);
* rows/s of log-table window reads through the engine, as cdcd's reader issues them
  (``SELECT * FROM log WHERE "cdc$stream_id" IN ? AND "cdc$time" > ? AND "cdc$time" <= ?``, paged
  with ``--page-size``), over every stream group (one vnode's streams) and ``--window-s`` windows
  (30 s: cdcd's first catch-up window);
* the process RSS after loading (current and peak).

Timestamps come from the engine clock: each ``bulk_load`` call of ``--call-size`` changes starts at
"now" with 1 µs steps, so every change stays within Scylla's 5 s "from the past/future" window.
``--profile FILE`` writes a cProfile of the CDC insert load to FILE.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scylla_emulator.bulk import bulk_load  # noqa: E402
from tests.scylla_emulator.engine import EmulatorEngine  # noqa: E402

_UUID_EPOCH = 0x01B21DD213814000


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MiB."""
    cur = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cur, peak


def _timeuuid(us: int, lsb: int) -> uuid.UUID:
    ticks = us * 10 + _UUID_EPOCH
    msb = ((ticks & 0xFFFFFFFF) << 32) | (((ticks >> 32) & 0xFFFF) << 16) | 0x1000 | ((ticks >> 48) & 0x0FFF)
    return uuid.UUID(int=(msb << 64) | lsb)


def _max_timeuuid(us: int) -> uuid.UUID:
    return _timeuuid(us, 0x7F7F7F7F7F7F7F7F)


def _load(
    engine: EmulatorEngine,
    table: str,
    rows: Callable[[int, int], Iterator[dict[str, Any]]],
    n: int,
    *,
    call_size: int,
    op: str,
) -> tuple[float, float]:
    """Load ``n`` changes in calls of ``call_size``; returns (changes/s wall clock, per CPU second)."""
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < n:
        k = min(call_size, n - done)
        bulk_load(engine, table, rows(done, done + k), op=op)  # type: ignore[arg-type]
        done += k
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def _read_windows(engine: EmulatorEngine, window_us: int, page_size: int) -> tuple[int, float, float, int]:
    """Read the whole log of bench.t group by group, window by window; (rows, rows/s wall clock,
    rows per CPU second, queries)."""
    gens = engine.generations.generations
    gen = gens[-1]
    lo_us = gen.start_ms * 1000
    hi_us = engine.now_us()
    q = 'SELECT * FROM bench."t_scylla_cdc_log" WHERE "cdc$stream_id" IN ? AND "cdc$time" > ? AND "cdc$time" <= ?'
    rows = queries = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for rng in gen.ranges:
        streams = list(rng.streams)
        w = lo_us
        while w < hi_us:
            end = min(w + window_us, hi_us)
            state: bytes | None = None
            while True:
                res = engine.execute_decoded(
                    q,
                    [streams, _max_timeuuid(w), _max_timeuuid(end)],
                    page_size=page_size,
                    paging_state=state,
                )
                queries += 1
                rows += len(res.rows)  # type: ignore[attr-defined]
                state = res.paging_state  # type: ignore[attr-defined]
                if not state:
                    break
            w = end
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return rows, rows / dt, rows / dc, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--call-size", type=int, default=20_000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--skip-plain", action="store_true", help="skip the non-CDC load")
    args = ap.parse_args()
    n, parts = args.changes, args.partitions

    rss0 = _rss_mb()[0]
    engine = EmulatorEngine(vnodes=16, shards=2)
    engine.execute_decoded(
        "CREATE KEYSPACE bench WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    engine.execute_decoded(
        "CREATE TABLE bench.t (pk int, ck int, v text, n bigint, PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}"
    )
    engine.execute_decoded(
        "CREATE TABLE bench.plain (pk int, ck int, v text, n bigint, PRIMARY KEY (pk, ck))"
    )

    def inserts(a: int, b: int) -> Iterator[dict[str, Any]]:
        return ({"pk": i % parts, "ck": i, "v": f"value-{i}", "n": i * 7} for i in range(a, b))

    def updates(a: int, b: int) -> Iterator[dict[str, Any]]:
        return ({"pk": i % parts, "ck": i, "n": -i} for i in range(a, b))

    def deletes(a: int, b: int) -> Iterator[dict[str, Any]]:
        return ({"pk": i % parts, "ck": i} for i in range(a, b))

    prof = cProfile.Profile() if args.profile else None
    if prof is not None:
        prof.enable()
    ins = _load(engine, "bench.t", inserts, n, call_size=args.call_size, op="insert")
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    rss_ins = _rss_mb()[0]
    upd = _load(engine, "bench.t", updates, n // 4, call_size=args.call_size, op="update")
    dele = _load(engine, "bench.t", deletes, n // 4, call_size=args.call_size, op="delete")
    total = n + 2 * (n // 4)
    print("(rates: wall clock / per CPU second of this process; they differ when the machine is busy)")
    print(f"bulk_load CDC insert  : {ins[0]:9,.0f} / {ins[1]:9,.0f} changes/s  ({n:,} changes)")
    print(f"bulk_load CDC update  : {upd[0]:9,.0f} / {upd[1]:9,.0f} changes/s  ({n // 4:,} changes)")
    print(f"bulk_load CDC delete  : {dele[0]:9,.0f} / {dele[1]:9,.0f} changes/s  ({n // 4:,} changes)")
    gc.collect()
    cur, peak = _rss_mb()
    print(
        f"RSS after CDC inserts : {rss_ins:9,.0f} MiB ({rss_ins - rss0:,.0f} MiB for {n:,} inserts: base + log rows)"
    )
    print(f"RSS after CDC load    : {cur:9,.0f} MiB (peak {peak:,.0f} MiB, {cur - rss0:,.0f} MiB for "
          f"{total:,} changes = base rows + log rows)")  # fmt: skip
    rows, rps, rpc, queries = _read_windows(engine, int(args.window_s * 1e6), args.page_size)
    print(f"log window reads      : {rps:9,.0f} / {rpc:9,.0f} rows/s     ({rows:,} rows, {queries:,} pages)")
    if rows != total:
        raise SystemExit(f"expected {total} log rows, read {rows}")
    if not args.skip_plain:
        plain = _load(engine, "bench.plain", inserts, n, call_size=args.call_size, op="insert")
        print(f"bulk_load plain insert: {plain[0]:9,.0f} / {plain[1]:9,.0f} changes/s  ({n:,} changes)")


if __name__ == "__main__":
    main()
