"""Throughput of TimescaleSink.write next to raw ``copy_records_to_table`` of the same rows.

    python -m bench.timescale_sink [--dsn postgresql://...] [--events 200000] [--batch 1000]

Without ``--dsn`` it starts its own throwaway PostgreSQL 15 with timescaledb preloaded (the test
suite's ``tests.conftest._PgCluster``: fsync off) and stops it at the end. Three tables of the
same shape (made by ``ensure_table``) receive the same N INSERT events in batches of ``--batch``,
interleaved batch by batch so all see the same machine load:

* ``sink``  : TimescaleSink.write into a hypertable (fold, COPY into staging, guarded upsert);
* ``raw``   : ``copy_records_to_table`` of the finished rows (built before timing) into a
  hypertable, one COPY (= one transaction) per batch;
* ``plain`` : the same sink into a table not listed in ``hypertables`` (hypertable overhead).

Rows: 1000 devices x one reading per device and hour, so a batch falls into one or two 1-day
chunks and the run spans ~N/24000 chunks. Prints events/s and the ratios. No asserts.

Measured (2 CPUs, TimescaleDB 2.19.3 Apache build, PostgreSQL 15, 200k events, batch 1000):
raw COPY 81k events/s, TimescaleSink 14.1k events/s (17 % of raw), plain-table sink 15.5k events/s
(hypertable / plain 91 %). The sink is bound by client CPU in postgres/fold.py (cProfile: ~2/3 of its time).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import time
import uuid
from typing import Any

import asyncpg

from cdcd.config import Duration, HypertableConfig, Secret, TimescaleDestination
from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import CdcOptions, Column, TableSchema, parse_cql_type
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from cdcd.sinks.timescale import TimescaleSink

COLUMNS = [
    ("device", "bigint", "partition_key"),
    ("ts", "timestamp", "clustering"),
    ("name", "text", "regular"),
    ("value", "double", "regular"),
    ("qty", "int", "regular"),
    ("ref", "uuid", "regular"),
]
T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
DEVICES = 1000


def _schema() -> TableSchema:
    pos = {"partition_key": 0, "clustering": 0}
    cols = []
    for name, typ, kind in COLUMNS:
        cols.append(Column(name, parse_cql_type(typ), kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    return TableSchema(keyspace="bench", name="t", columns=tuple(cols), clustering_order=("asc",),
                       cdc=CdcOptions(enabled=True))  # fmt: skip


def _events(n: int) -> list[ChangeEvent]:
    stream = os.urandom(16)
    base = 1_700_000_000_000_000
    out = []
    for i in range(n):
        wt = base + i
        out.append(
            ChangeEvent(
                table="bench.t",
                pos=Position(generation=0, stream_id=stream, time=uuid.UUID(int=(wt << 64) | (1 << 63) | i)),
                batch_seq=0,
                op=Op.INSERT,
                write_time_us=wt,
                key={"device": i % DEVICES, "ts": T0 + dt.timedelta(hours=i // DEVICES)},
                values={"name": f"device {i % DEVICES}", "value": i * 0.5, "qty": i % 97, "ref": uuid.UUID(int=i)},
            )
        )  # fmt: skip
    return out


def _raw_records(events: list[ChangeEvent]) -> list[tuple[Any, ...]]:
    """The rows the sink ends up storing, in the table's column order."""
    return [
        (e.key["device"], e.key["ts"], e.values["name"], e.values["value"], e.values["qty"], e.values["ref"],
         e.write_time_us, True, False, None)
        for e in events
    ]  # fmt: skip


RAW_COLUMNS = ["device", "ts", "name", "value", "qty", "ref",
               "_cdc_write_time", "_cdc_row_marker", "_cdc_deleted", "_cdc_deleted_at"]  # fmt: skip


async def _run(dsn: str, n: int, batch: int) -> None:
    admin = await asyncpg.connect(dsn)
    db = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{db}"')
    base, _, _ = dsn.rpartition("/")
    bench_dsn = f"{base}/{db}"
    hyper = HypertableConfig(time_column="ts", chunk_interval=Duration(86400.0))
    cfg = TimescaleDestination(
        dsn=Secret(bench_dsn), pool_size=2, hypertables={"bench.sink": hyper, "bench.raw": hyper}
    )
    sink = TimescaleSink("bench", cfg)
    conn: asyncpg.Connection | None = None
    try:
        await sink.connect()
        sch = _schema()
        maps = {
            name: TableMapping(source=f"bench.{name}", target_schema="bench", target_table=name)
            for name in ("sink", "raw", "plain", "warm")
        }
        for m in maps.values():
            await sink.ensure_table(m, sch)
        assert sink.features is not None
        print(f"TimescaleDB {sink.features.version} (license {sink.features.license}), "
              f"events={n} batch={batch}")  # fmt: skip
        conn = await asyncpg.connect(bench_dsn)
        await PostgresSink._init_connection(conn)

        events = _events(n)
        batches = [events[i : i + batch] for i in range(0, n, batch)]
        raws = [_raw_records(b) for b in batches]
        await sink.write(maps["warm"], _events(batch))  # warm caches and statement paths

        gc.collect()
        gc.freeze()
        spent = {"sink": 0.0, "raw": 0.0, "plain": 0.0}
        applied = {"sink": 0, "plain": 0}
        for b, rows in zip(batches, raws, strict=True):
            t0 = time.perf_counter()
            await conn.copy_records_to_table("raw", schema_name="bench", records=rows, columns=RAW_COLUMNS)
            t1 = time.perf_counter()
            applied["sink"] += (await sink.write(maps["sink"], b)).applied
            t2 = time.perf_counter()
            applied["plain"] += (await sink.write(maps["plain"], b)).applied
            t3 = time.perf_counter()
            spent["raw"] += t1 - t0
            spent["sink"] += t2 - t1
            spent["plain"] += t3 - t2
        gc.unfreeze()

        rate = {k: n / v for k, v in spent.items()}
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'sink'"
        )
        print(
            f"  raw copy_records_to_table (hypertable) : {rate['raw']:10.0f} events/s ({spent['raw']:.2f} s)"
        )
        print(
            f"  TimescaleSink.write (hypertable)       : {rate['sink']:10.0f} events/s ({spent['sink']:.2f} s)"
        )
        print(
            f"  TimescaleSink.write (plain table)      : {rate['plain']:10.0f} events/s ({spent['plain']:.2f} s)"
        )
        print(f"  sink / raw                             : {rate['sink'] / rate['raw']:.0%}")
        print(f"  hypertable / plain (sink)              : {rate['sink'] / rate['plain']:.0%}")
        counts = [await conn.fetchval(f"SELECT count(*) FROM bench.{t}") for t in ("sink", "raw", "plain")]
        print(f"rows sink/raw/plain={counts} applied={applied} chunks(sink)={chunks}")
        same = await conn.fetchval(
            "SELECT count(*) FROM (SELECT device, ts, name, value, qty, ref, _cdc_write_time FROM bench.sink "
            "EXCEPT SELECT device, ts, name, value, qty, ref, _cdc_write_time FROM bench.raw) d"
        )
        if same:
            print(f"  MISMATCH: {same} rows of the sink's table differ from the raw table")
    finally:
        if conn is not None:
            await conn.close()
        await sink.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--dsn", help="PostgreSQL with timescaledb preloaded (default: start a throwaway one)")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    cluster = None
    dsn = args.dsn
    if dsn is None:
        from tests.conftest import _PgCluster

        cluster = _PgCluster()
        if not cluster.timescaledb:
            cluster.stop()
            raise SystemExit("timescaledb is not installed; run `bash deploy/install.sh`")
        dsn = cluster.dsn
    try:
        asyncio.run(_run(dsn, args.events, args.batch))
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
