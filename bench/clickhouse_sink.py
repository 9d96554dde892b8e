"""Throughput of ClickHouseSink.write next to the raw clickhouse-connect insert of the same rows.

    python -m bench.clickhouse_sink [--url http://127.0.0.1:8123] [--events 50000] [--batch 1000]

Without ``--url`` it starts its own ``tests.clickhouse_server`` (chDB) subprocess. Three workloads
of N events in batches of ``--batch``, each written by the sink (convert, read back what is needed,
fold, Native insert with a dedup token) and, into a table of the same shape, by ``client.insert``
of the finished columns (column-oriented, types given, same token setting), interleaved batch by
batch so both see the same machine load:

1. full-row INSERTs of new keys (the target: sink >= 60% of raw);
2. partial UPDATEs of those keys (every row read back and merged);
3. the same with the optional row cache (``row_cache_rows``) holding every key.

Prints events/s of both, the ratio, and checks the tables agree via ``FINAL``. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect

from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import CdcOptions, Column, TableSchema, parse_cql_type
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse import ClickHouseSink
from cdcd.sinks.clickhouse.fold import BatchState, prepare

COLUMNS = [
    ("pk", "bigint", "partition_key"),
    ("ck", "int", "clustering"),
    ("name", "text", "regular"),
    ("amount", "double", "regular"),
    ("qty", "int", "regular"),
    ("at", "timestamp", "regular"),
    ("ref", "uuid", "regular"),
    ("tags", "frozen<list<text>>", "regular"),
]


class _Config:
    def __init__(self, url: str, row_cache_rows: int = 0) -> None:
        self.kind = "clickhouse"
        self.url = url
        self.username = "default"
        self.password = None
        self.row_cache_rows = row_cache_rows


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
    at = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
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
                key={"pk": i // 10, "ck": i % 10},
                values={"name": f"customer {i}", "amount": i * 1.25, "qty": i % 97,
                        "at": at + dt.timedelta(milliseconds=i), "ref": uuid.UUID(int=i), "tags": ["a", str(i % 7)]},
            )
        )  # fmt: skip
    return out


def _start_server() -> tuple[subprocess.Popen[bytes], str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="cdcd-bench-ch-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.clickhouse_server", "--port", str(port), "--path", os.path.join(workdir, "d")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/ping", timeout=1).status == 200:
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return proc, url, workdir


def _updates(inserts: list[ChangeEvent]) -> list[ChangeEvent]:
    """One partial UPDATE (``qty`` only) per key, later than every event in ``inserts``."""
    stream = os.urandom(16)
    base = max(e.write_time_us for e in inserts) + 1
    out = []
    for i, ins in enumerate(inserts):
        wt = base + i
        out.append(
            ChangeEvent(
                table="bench.t",
                pos=Position(generation=0, stream_id=stream, time=uuid.UUID(int=(wt << 64) | (1 << 63) | i)),
                batch_seq=0, op=Op.UPDATE, write_time_us=wt, key=ins.key, values={"qty": -i},
            )
        )  # fmt: skip
    return out


def _raw_blocks(
    sink: ClickHouseSink, m: TableMapping, batches: list[list[ChangeEvent]], before: list[ChangeEvent]
) -> list[Any]:
    """The exact rows the sink inserts per batch, folded in memory (``before``: the events already
    applied to the rows these batches touch), prepared outside the timed loop."""
    table = sink._tables[(m.source, m.target)]
    by_key = {tuple(e.key.values()): e for e in before}
    out = []
    for b in batches:
        evs = [by_key[tuple(e.key.values())] for e in b if tuple(e.key.values()) in by_key] + list(b)
        state = BatchState(table.codec, "hard")
        for p in prepare(table.codec, evs)[0]:
            state.apply(p)
        (block,) = sink._blocks(table, state, evs)
        out.append(block)
    return out


async def _measure(  # noqa: PLR0917
    label: str,
    sink: ClickHouseSink,
    m_sink: TableMapping,
    client: Any,
    batches: list[list[ChangeEvent]],
    raw_blocks: list[Any],
) -> None:
    """Interleaved batch by batch (alternating which goes first: each insert makes the server merge
    in the background), so both paths see the same machine load. The pre-built events
    and blocks are moved out of the GC's sight (a daemon holds only a bounded queue of events)."""
    gc.collect()
    gc.freeze()
    raw_s = sink_s = 0.0
    applied = n = 0
    for i, (b, block) in enumerate(zip(batches, raw_blocks, strict=True)):
        for path in ("raw", "sink") if i % 2 == 0 else ("sink", "raw"):  # alternate who goes first
            t0 = time.perf_counter()
            if path == "raw":
                await client.insert(
                    block.table, block.columns(), column_names=block.names, column_type_names=block.types,
                    column_oriented=True, settings={"insert_deduplication_token": f"raw:{label}:{i}"},
                )  # fmt: skip
                raw_s += time.perf_counter() - t0
            else:
                applied += (await sink.write(m_sink, b)).applied
                sink_s += time.perf_counter() - t0
        n += len(b)
    gc.unfreeze()
    raw_rate, sink_rate = n / raw_s, n / sink_s
    print(f"{label}: events={n} batch={len(batches[0])} applied={applied}")
    print(f"  raw client.insert : {raw_rate:10.0f} events/s ({raw_s:.2f} s)")
    print(f"  ClickHouseSink    : {sink_rate:10.0f} events/s ({sink_s:.2f} s)")
    print(f"  sink / raw        : {sink_rate / raw_rate:.0%}")


async def _run(url: str, n: int, batch: int) -> None:
    events = _events(n)
    updates = _updates(events)
    sch = _schema()
    db = f"bench_{uuid.uuid4().hex[:8]}"
    sink = ClickHouseSink("bench", _Config(url))
    await sink.connect()
    m_sink = TableMapping(source="bench.t", target_schema=db, target_table="sink", delete="hard")
    m_raw = TableMapping(source="bench.t", target_schema=db, target_table="raw", delete="hard")
    await sink.ensure_table(m_sink, sch)
    await sink.ensure_table(m_raw, sch)  # same shape; filled with plain client.insert below
    batches = [events[i : i + batch] for i in range(0, n, batch)]
    ubatches = [updates[i : i + batch] for i in range(0, n, batch)]
    raw_inserts = _raw_blocks(sink, m_raw, batches, [])
    raw_updates = _raw_blocks(sink, m_raw, ubatches, events)
    u = urlsplit(url)
    client = await clickhouse_connect.get_async_client(
        host=u.hostname, port=u.port, autogenerate_session_id=False
    )

    # Warm up both paths (clickhouse-connect imports pandas etc. lazily on first use).
    warm = TableMapping(source="bench.t", target_schema=db, target_table="warm", delete="hard")
    await sink.ensure_table(warm, sch)
    await sink.write(warm, _events(batch))  # a full batch: large parameters take another code path
    await sink.write(warm, _updates(_events(batch)))

    # 1. New keys, full-row INSERTs (the bulk path: no read-back).
    await _measure("insert (new keys)", sink, m_sink, client, batches, raw_inserts)
    # 2. Partial UPDATEs of those keys: every row is read back and merged.
    await _measure("update (partial rows)", sink, m_sink, client, ubatches, raw_updates)
    # 3. The same with the optional row cache (row_cache_rows) holding every key: no read-back.
    cached = ClickHouseSink("bench-cached", _Config(url, row_cache_rows=n))
    await cached.connect()
    m_cached = TableMapping(source="bench.t", target_schema=db, target_table="cached", delete="hard")
    await cached.ensure_table(m_cached, sch)
    for b in batches:  # fills the table and the cache (not timed)
        await cached.write(m_cached, b)
    later = _updates(_updates(events))  # newer than the updates above
    lbatches = [later[i : i + batch] for i in range(0, n, batch)]
    raw_later = _raw_blocks(sink, m_raw, lbatches, events)
    await _measure("update (partial rows, row cache)", cached, m_cached, client, lbatches, raw_later)
    await cached.aclose()

    got = []
    for name in ("sink", "raw", "cached"):
        res = await client.query(f"SELECT count(), sum(qty) FROM `{db}`.`{name}` FINAL")
        got.append(tuple(res.result_rows[0]))
    print(f"rows via FINAL (count, sum(qty)): sink={got[0]} raw={got[1]} sink with cache={got[2]}")
    if len(set(got)) != 1:
        print("  MISMATCH between the tables")
    await client.command(f"DROP DATABASE IF EXISTS `{db}`")
    await client.close()
    await sink.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="ClickHouse HTTP URL (default: start tests.clickhouse_server)")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    proc = None
    workdir = None
    url = args.url
    if url is None:
        proc, url, workdir = _start_server()
    try:
        asyncio.run(_run(url, args.events, args.batch))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
