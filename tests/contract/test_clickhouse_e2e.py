"""Source to ClickHouse, end to end: CQL writes on the Scylla emulator -> CDC log -> GroupReader ->
ClickHouseSink, then ``SELECT * FROM ks.t`` (driver) equals ``SELECT * FROM t FINAL`` field by field.

A seeded random workload covers every CQL type, partial INSERTs/UPDATEs, every collection and UDT
delta, static columns, column/row/range/partition deletes, for each delete strategy. The comparison
normalises both sides guided by the column's CQL type, following docs/type-map-clickhouse.md
(written independently of cdcd/sinks/clickhouse/types.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cassandra.util import Duration

from cdcd.schema import CqlType, TableSchema
from cdcd.scylla import GroupReader, ReaderConfig, ScyllaSession, StreamDiscovery
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse import ClickHouseSink
from tests.contract.test_clickhouse_sink import Config

FAST = ReaderConfig(
    confidence_window_s=0.3, window_s=0.5, max_window_s=5.0, poll_interval_s=0.1, generation_poll_s=0.2
)

SCALARS: dict[str, Any] = {
    "a_text": lambda r: r.choice(["x", "it's", "zażółć 😀", ""]),
    "a_big": lambda r: r.choice([0, -(2**63), 2**63 - 1, r.randint(-1000, 1000)]),
    "a_small": lambda r: r.randint(-(2**15), 2**15 - 1),
    "a_varint": lambda r: r.choice([0, 10**40 + r.randint(0, 9), -(10**30)]),
    "a_dec": lambda r: r.choice([decimal.Decimal("1.10"), decimal.Decimal("-0.000123"), decimal.Decimal("1E+30")]),
    "a_float": lambda r: r.choice([1.5, -0.25, 3.0e38]),
    "a_double": lambda r: r.choice([1e300, -2.5, 0.1]),
    "a_bool": lambda r: r.random() < 0.5,
    "a_uuid": lambda r: uuid.UUID(int=r.getrandbits(128), version=4),
    "a_tuuid": lambda r: uuid.uuid1(clock_seq=r.randint(0, 1000)),
    "a_ts": lambda r: dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC) + dt.timedelta(days=r.randint(-10**5, 10**5)),
    "a_date": lambda r: dt.date(2024, 1, 1) + dt.timedelta(days=r.randint(-700000, 2000000)),
    "a_time": lambda r: dt.time(r.randint(0, 23), r.randint(0, 59), 1, r.randint(0, 999999)),
    "a_dur": lambda r: Duration(r.randint(-5, 5), r.randint(-5, 5), r.randint(0, 10**12)),
    "a_inet": lambda r: r.choice(["10.0.0.1", "2001:db8::7", "::1"]),
    "a_blob": lambda r: bytes(r.getrandbits(8) for _ in range(r.randint(0, 5))),
    "a_tuple": lambda r: (r.randint(0, 9), r.choice(["t", None])),
    "f_list": lambda r: [r.randint(0, 3) for _ in range(r.randint(0, 3))],
    "f_udt": lambda r: (r.randint(0, 9), r.choice(["u", None])),  # UDT values bind by position
}  # fmt: skip
TYPES = {
    "a_text": "text", "a_big": "bigint", "a_small": "smallint", "a_varint": "varint", "a_dec": "decimal",
    "a_float": "float", "a_double": "double", "a_bool": "boolean", "a_uuid": "uuid", "a_tuuid": "timeuuid",
    "a_ts": "timestamp", "a_date": "date", "a_time": "time", "a_dur": "duration", "a_inet": "inet",
    "a_blob": "blob", "a_tuple": "tuple<int, text>", "f_list": "frozen<list<int>>", "f_udt": "frozen<ut>",
    "l": "list<int>", "s": "set<text>", "m": "map<int, text>", "u": "ut",
}  # fmt: skip
DDL = (
    "CREATE TABLE ks.t (pk int, ck int, st text static, "
    + ", ".join(f"{n} {t}" for n, t in TYPES.items())
    + ", PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}"
)


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        await session.execute(
            "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        await session.execute("CREATE TYPE ks.ut (a int, b text)")
        await session.execute(DDL)
        yield session
    finally:
        await session.aclose()


async def _workload(s: ScyllaSession, seed: int, n: int) -> None:
    """``n`` random statements on 2 partitions x 3 clustering rows."""
    r = random.Random(seed)
    for _ in range(n):
        pk, ck = r.randint(0, 1), r.randint(0, 2)
        kind = r.random()
        if kind < 0.30:
            cols = r.sample(sorted(SCALARS), r.randint(1, 6))
            vals = [SCALARS[c](r) for c in cols]
            q = f"INSERT INTO ks.t (pk, ck, {', '.join(cols)}) VALUES (?, ?, {', '.join('?' * len(cols))})"
            await s.execute(await s.prepare(q), [pk, ck, *vals])
        elif kind < 0.55:
            cols = r.sample(sorted(SCALARS), r.randint(1, 4))
            sets = ", ".join(f"{c} = ?" for c in cols)
            q = f"UPDATE ks.t SET {sets} WHERE pk = ? AND ck = ?"
            await s.execute(await s.prepare(q), [*(SCALARS[c](r) for c in cols), pk, ck])
        elif kind < 0.80:
            op, val = r.choice(
                [
                    ("l = l + ?", [r.randint(0, 3)]), ("l = ? + l", [r.randint(0, 3)]), ("l = l - ?", [r.randint(0, 3)]),
                    ("l = ?", [r.randint(0, 3), r.randint(0, 3)]), ("s = s + ?", {r.choice("abc"), r.choice("abc")}),
                    ("s = s + ?", {r.choice("abc")}), ("s = s - ?", {r.choice("abc")}),
                    ("m = m + ?", {r.randint(0, 2): r.choice("xyz")}), ("m = m + ?", {r.randint(0, 2): r.choice("xyz")}),
                    ("m = m - ?", {r.randint(0, 2)}), ("u.a = ?", r.randint(0, 9)), ("u.b = ?", r.choice(["q", None])),
                    ("u = ?", (1, None)), ("st = ?", r.choice(["S1", "S2", "S3", None])),
                ]
            )  # fmt: skip
            if op.startswith("st"):
                await s.execute(await s.prepare(f"UPDATE ks.t SET {op} WHERE pk = ?"), [val, pk])
            else:
                await s.execute(
                    await s.prepare(f"UPDATE ks.t SET {op} WHERE pk = ? AND ck = ?"), [val, pk, ck]
                )
        elif kind < 0.88:
            cols = r.sample([*sorted(SCALARS), "l", "s", "m", "u"], r.randint(1, 3))
            await s.execute(
                await s.prepare(f"DELETE {', '.join(cols)} FROM ks.t WHERE pk = ? AND ck = ?"), [pk, ck]
            )
        elif kind < 0.94:
            await s.execute(await s.prepare("DELETE FROM ks.t WHERE pk = ? AND ck = ?"), [pk, ck])
        elif kind < 0.98:
            cond = r.choice(["ck > ?", "ck >= ?", "ck < ?", "ck <= ?"])
            await s.execute(await s.prepare(f"DELETE FROM ks.t WHERE pk = ? AND {cond}"), [pk, ck])
        else:
            await s.execute(await s.prepare("DELETE FROM ks.t WHERE pk = ?"), [pk])


TAIL = [  # every element-level delta, last, on rows the random phase left in any state
    ("l = l + ?", [1, 2, 3]), ("l = l - ?", [2]), ("l = ? + l", [9]), ("s = s + ?", {"a", "b", "c"}),
    ("s = s - ?", {"b"}), ("m = m + ?", {0: "x", 1: "y"}), ("m = m - ?", {0}), ("u.a = ?", 5), ("u.b = ?", "q"),
    ("u.a = ?", None),
]  # fmt: skip


async def _tail(s: ScyllaSession) -> None:
    """Each delta of TAIL on 3 keys, one statement at a time, so some of them meet in one batch and
    some are merged with what ClickHouse already holds."""
    for op, val in TAIL:
        for pk, ck in ((0, 0), (0, 1), (1, 2)):
            await s.execute(await s.prepare(f"UPDATE ks.t SET {op} WHERE pk = ? AND ck = ?"), [val, pk, ck])


# --------------------------------------------------------------------------- comparable values
def _src(t: CqlType, v: Any) -> Any:
    """Driver value -> comparable."""
    if t.is_collection:
        if not v:
            return ()
        if t.name == "map":
            return tuple((_src(t.params[0], k), _src(t.params[1], x)) for k, x in v.items())
        return tuple(_src(t.params[0], x) for x in v)
    if v is None:
        return None
    n = t.name
    if n == "decimal":
        return str(v)
    if n == "timestamp":
        return v.replace(tzinfo=None) if v.tzinfo is None else v.astimezone(dt.UTC).replace(tzinfo=None)
    if n == "date":
        return v if isinstance(v, dt.date) else v.date()
    if n == "time":
        return v.nanosecond_time if hasattr(v, "nanosecond_time") else (
            ((v.hour * 60 + v.minute) * 60 + v.second) * 10**9 + v.microsecond * 1000)  # fmt: skip
    if n == "duration":
        return (v.months, v.days, v.nanoseconds)
    if n == "inet":
        a = ipaddress.ip_address(v)
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a
    if n == "tuple":
        return tuple(_src(p, x) for p, x in zip(t.params, v, strict=True))
    if n == "udt":
        assert t.udt is not None
        get = v.get if isinstance(v, dict) else lambda f: getattr(v, f)
        out = tuple(_src(p, get(f)) for f, p in zip(t.udt.field_names, t.udt.field_types, strict=True))
        return None if not t.frozen and all(x is None for x in out) else out
    return v


def _ch(t: CqlType, v: Any) -> Any:
    """ClickHouse value (Tuple read as tuple, String as str or bytes for blobs) -> comparable."""
    if t.is_collection:
        if not v:
            return ()
        if t.name == "map":
            items = (
                v.items()
                if isinstance(v, dict)
                else [tuple(x.values()) if isinstance(x, dict) else x for x in v]
            )
            return tuple((_ch(t.params[0], k), _ch(t.params[1], x)) for k, x in items)
        return tuple(_ch(t.params[0], x) for x in v)
    if v is None:
        return None
    n = t.name
    if n == "inet" and isinstance(v, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + v.packed)
    if n == "duration":
        return tuple(v)
    if n == "tuple":
        return tuple(_ch(p, x) for p, x in zip(t.params, v, strict=True))
    if n == "udt":
        assert t.udt is not None
        return tuple(_ch(p, x) for p, x in zip(t.udt.field_types, v, strict=True))
    if n == "timestamp":
        return v.replace(tzinfo=None) if v.tzinfo is None else v.astimezone(dt.UTC).replace(tzinfo=None)
    return v


async def _source(s: ScyllaSession, sch: TableSchema) -> tuple[dict[Any, Any], dict[Any, Any]]:
    cols = [c for c in sch.columns if c.kind == "regular"]
    rows: dict[Any, Any] = {}
    static: dict[Any, Any] = {}
    for r in await s.execute("SELECT * FROM ks.t"):
        if r["st"] is not None:
            static[r["pk"]] = r["st"]
        if r["ck"] is not None:
            rows[(r["pk"], r["ck"])] = tuple(_src(c.type, r[c.name]) for c in cols)
    return rows, static


async def _replica(ch: Any, db: str, sch: TableSchema, soft: bool) -> tuple[dict[Any, Any], dict[Any, Any]]:
    cols = [c for c in sch.columns if c.kind == "regular"]
    where = "WHERE _cdc_deleted = 0" if soft else ""
    res = await ch.query(
        f"SELECT * FROM `{db}`.`t` FINAL {where}",
        query_formats={"Tuple": "tuple"},
        column_formats={"a_blob": "bytes"},
    )
    rows = {}
    for raw in res.result_rows:
        rec = dict(zip(res.column_names, raw, strict=True))
        rows[(rec["pk"], rec["ck"])] = tuple(_ch(c.type, rec[c.name]) for c in cols)
    res = await ch.query(f"SELECT pk, st FROM `{db}`.`t_static` FINAL {where}")
    static = {pk: st for pk, st in res.result_rows if st is not None}
    return rows, static


@pytest.mark.parametrize("delete", ["hard", "soft", "tombstone"])
async def test_random_workload_replicates_field_by_field(
    scylla: ScyllaSession, clickhouse_url: str, ch: Any, ch_database: str, delete: str
) -> None:
    sch = await scylla.table_schema("ks", "t")
    sink = ClickHouseSink("ch", Config(clickhouse_url))
    await sink.connect()
    m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t", delete=delete)  # type: ignore[arg-type]
    await sink.ensure_table(m, sch)
    discovery = StreamDiscovery(scylla)
    groups = await discovery.groups("ks.t", since_ms=0, ttl_s=0)
    failures: list[BaseException] = []

    async def replicate(g: Any) -> None:
        try:
            async for batch in GroupReader(scylla, discovery, g, config=FAST, start_floor_ms=0).read({}):
                if batch.events:
                    await sink.write(m, batch.events)
        except Exception as exc:  # surfaced by the assertion below
            failures.append(exc)

    tasks = [asyncio.create_task(replicate(g)) for g in groups]
    try:
        await _workload(scylla, seed={"hard": 11, "soft": 12, "tombstone": 13}[delete], n=250)
        await _tail(scylla)
        want = await _source(scylla, sch)
        assert want[0], "the workload leaves rows"
        got: Any = None
        async with asyncio.timeout(60):
            while not failures:
                got = await _replica(ch, ch_database, sch, delete == "soft")
                if got == want:
                    break
                await asyncio.sleep(0.3)
        assert not failures, failures
        assert got[1] == want[1]
        for key in sorted(set(got[0]) | set(want[0])):
            assert got[0].get(key) == want[0].get(key), key
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sink.aclose()


@pytest.fixture
async def stores(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Any, Any]]:
    import redis.asyncio as aioredis

    from cdcd.state import CheckpointStore, DeadLetterStore

    client = aioredis.Redis.from_url(redis_url)
    try:
        yield CheckpointStore(client, prefix=redis_prefix), DeadLetterStore(client, prefix=redis_prefix)
    finally:
        await client.aclose()


async def test_pipelines_replaying_after_a_crash_converge_to_the_source(
    scylla: ScyllaSession, clickhouse_url: str, ch: Any, ch_database: str, stores: tuple[Any, Any]
) -> None:
    """R-04 through the real pipeline: the first run is abandoned before any checkpoint, the source
    changes while cdcd is down, and the restart replays everything already written before it
    catches up."""
    from cdcd.flow import BatchPolicy, CommitPolicy, Pipeline, PipelineConfig, RetryPolicy

    sch = await scylla.table_schema("ks", "t")
    sink = ClickHouseSink("ch", Config(clickhouse_url))
    await sink.connect()
    m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t", delete="hard")
    await sink.ensure_table(m, sch)
    discovery = StreamDiscovery(scylla)
    groups = await discovery.groups("ks.t", since_ms=0, ttl_s=0)
    flow = PipelineConfig(
        batch=BatchPolicy(max_rows=7, max_wait=0.05),
        retry=RetryPolicy(initial=0.05, max=0.2),
        commit=CommitPolicy(every_s=3600, every_events=10**6),  # no checkpoint before the crash
    )

    def start() -> tuple[list[Any], list[asyncio.Task[None]]]:
        ps = [
            Pipeline(
                destination="ch", group=g, mapping=m, sink=sink, checkpoints=stores[0], deadletters=stores[1],
                source=GroupReader(scylla, discovery, g, config=FAST, start_floor_ms=0).read, config=flow,
            )
            for g in groups
        ]  # fmt: skip
        return ps, [asyncio.create_task(p.run()) for p in ps]

    async def converge() -> None:
        want = await _source(scylla, sch)
        got: Any = None
        async with asyncio.timeout(60):
            while (got := await _replica(ch, ch_database, sch, False)) != want:  # noqa: ASYNC110 (polls ClickHouse)
                await asyncio.sleep(0.3)
        assert got == want

    try:
        first, runs = start()
        await _workload(scylla, seed=21, n=120)
        await converge()
        for p in first:
            p.terminate()  # a crash: what was written after the last checkpoint is replayed
        await asyncio.gather(*runs, return_exceptions=True)
        await _workload(scylla, seed=22, n=120)  # while cdcd is down
        await _tail(scylla)
        second, runs = start()
        await converge()
        seen = sum(p.status().events_applied + p.status().events_skipped_stale for p in second)
        assert seen > sum(p.status().events_applied for p in first), "the first run's events came again"
        for p in second:
            await p.close(deadline=10)
        await asyncio.gather(*runs, return_exceptions=True)
        assert all(p.state == "closed" for p in second), [p.state for p in second]
    finally:
        await sink.aclose()
