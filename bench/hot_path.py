"""The pure CPU parts of cdcd's hot path, in process, without servers: CPU microseconds per change
for each stage, on the change mix of ``all_destinations.py``. Not a test: it prints figures.

    python bench/hot_path.py [--rows 100000] [--repeat 3] [--profile FILE]

Stages (each timed with ``time.process_time``, best of ``--repeat``):

* ``assemble``: ``GroupAssembler.feed`` of the log rows as the driver's ``dict_factory`` gives them
  (1000-row pages, per stream by ``cdc$time``);
* ``decode``: ``LogDecoder.decode`` of every group;
* ``pg fold``: ``cdcd.sinks.postgres.fold.fold`` of 1000-event batches (the PostgreSQL sink's
  per-row plans, before the COPY records are built);
* ``ch prepare``: ``cdcd.sinks.clickhouse.prepare.prepare`` of the same batches, then
  ``BatchState.apply`` of every prepared event and ``output`` (as if nothing was stored);
* ``telemetry``: ``FlowTelemetry.batch_written`` per batch.

The source table is ``all_destinations.py``'s: ``(pk bigint, ck timestamp, v text, n bigint,
PRIMARY KEY (pk, ck))``, 80 % INSERTs of new keys, 15 % UPDATEs of ``n``, 5 % row DELETEs. Read
and write I/O, the driver's wire decoding and the event loop are not included: compare with
``all_destinations.py`` (whole-process CPU per 100k changes) for those.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdcd.events import ChangeEvent  # noqa: E402
from cdcd.schema import CdcOptions, Column, CqlType, TableSchema  # noqa: E402
from cdcd.scylla.decode import LogDecoder  # noqa: E402
from cdcd.scylla.windows import GroupAssembler, min_timeuuid  # noqa: E402
from cdcd.sinks import TableMapping  # noqa: E402

T0 = dt.datetime(2024, 1, 1)  # naive UTC, as the driver returns timestamps
STREAMS = 16


def schema() -> TableSchema:
    cols = (
        Column("pk", CqlType("bigint"), "partition_key", 0),
        Column("ck", CqlType("timestamp"), "clustering", 0),
        Column("v", CqlType("text"), "regular", 0),
        Column("n", CqlType("bigint"), "regular", 0),
    )
    return TableSchema("bench", "events", cols, cdc=CdcOptions(enabled=True))


def log_rows(total: int, seed: int = 1) -> list[dict[str, Any]]:
    """One dict per log row (every change is a one-row group), ordered per stream by time."""
    rng = random.Random(seed)
    parts = max(1, int(total * 0.8) // 100)
    live: list[int] = []
    rows: list[tuple[bytes, int, dict[str, Any]]] = []
    streams = [bytes([i]) * 16 for i in range(STREAMS)]
    us = 1_700_000_000_000_000
    inserted = 0
    for i in range(total):
        r = rng.random()
        row: dict[str, Any] = dict.fromkeys(
            ("v", "n", "cdc$deleted_v", "cdc$deleted_n", "cdc$ttl", "cdc$batch_seq_no")
        )
        row["cdc$batch_seq_no"] = 0
        row["cdc$end_of_batch"] = True
        if r < 0.8 or not live:
            k = inserted
            inserted += 1
            live.append(k)
            row.update({"cdc$operation": 2, "v": f"value-{k}", "n": k})
        elif r < 0.95:
            k = live[rng.randrange(len(live))]
            row.update({"cdc$operation": 1, "n": -i})
        else:
            k = live.pop(rng.randrange(len(live)))
            row.update({"cdc$operation": 3, "v": None, "n": None})
            del row["cdc$deleted_v"], row["cdc$deleted_n"]
        row["pk"] = k % parts
        row["ck"] = T0 + dt.timedelta(seconds=10 * k)
        us += 7
        t = min_timeuuid(us)
        t = uuid.UUID(int=t.int ^ rng.getrandbits(48))  # a random node, as Scylla's cdc$time has
        s = streams[k % STREAMS]
        row["cdc$stream_id"], row["cdc$time"] = s, t
        rows.append((s, i, row))
    rows.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in rows]


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times = []
    out = None
    for _ in range(repeat):
        gc.collect()
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--profile", help="also write a cProfile of one pass of every stage here")
    args = ap.parse_args()

    from cdcd.ops.emit import FlowTelemetry
    from cdcd.ops.logging import configure

    configure("info")  # as cdcd runs: the per-batch debug line is filtered
    from cdcd.flow.contracts import PipelineId
    from cdcd.sinks import WriteOutcome
    from cdcd.sinks.clickhouse.fold import BatchState, blind_keys, prepare
    from cdcd.sinks.clickhouse.sink import _Table as ChTable
    from cdcd.sinks.postgres.fold import fold
    from cdcd.sinks.postgres.table import PgTable

    sch = schema()
    rows = log_rows(args.rows)
    mapping = TableMapping(source="bench.events", target_schema="dst", target_table="events")
    pg = PgTable(mapping, sch)
    ch = ChTable(mapping, sch)
    pid = PipelineId(destination="pg", table="bench.events", group="0:0")
    telemetry = FlowTelemetry()

    def assemble() -> list[Any]:
        a = GroupAssembler()
        groups: list[Any] = []
        for i in range(0, len(rows), 1000):
            done, _ = a.feed(rows[i : i + 1000])
            groups.extend(done)
        return groups

    groups = assemble()

    def decode() -> list[ChangeEvent]:
        d = LogDecoder(sch)
        out: list[ChangeEvent] = []
        for _, _, g in groups:
            out.extend(d.decode(g, generation=0))
        return out

    events = decode()
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]

    def pg_fold() -> None:
        for b in batches:
            fold(pg.codec, b, soft=pg.soft)

    def ch_fold() -> None:
        for b in batches:
            prepared, _ = prepare(ch.codec, b)
            state = BatchState(ch.codec, "hard")
            state.blind = blind_keys(ch.codec, prepared)
            for p in prepared:
                state.apply(p)
            state.output(False)

    def telemetry_pass() -> None:
        for b in batches:
            telemetry.batch_written(pid, b, WriteOutcome(applied=len(b)), 0.01)

    stages = [("assemble", assemble), ("decode", decode), ("pg fold", pg_fold), ("ch prepare+fold", ch_fold),
              ("telemetry", telemetry_pass)]  # fmt: skip
    n = len(events)
    print(
        f"{n:,} changes ({len(groups):,} groups, {len(batches)} batches of {args.batch}), best of {args.repeat}"
    )
    total = 0.0
    for name, fn in stages:
        secs, _ = best(fn, args.repeat)
        total += secs
        print(f"  {name:18s} {secs * 1e6 / n:7.2f} µs/change  ({secs * 100_000 / n:5.2f} CPU-s per 100k)")
    print(
        f"  {'all stages':18s} {total * 1e6 / n:7.2f} µs/change  ({total * 100_000 / n:5.2f} CPU-s per 100k)"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _, fn in stages:
            fn()
        prof.disable()
        prof.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
