"""The TimescaleDB sink against a real PostgreSQL 15 with TimescaleDB 2.19.3 (Apache-only build):
hypertables and what ends up in them after write()."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from cdcd.config import Duration, HypertableConfig, Secret, TimescaleDestination
from cdcd.errors import ConfigError, SchemaMismatch
from cdcd.events import ChangeEvent, Op, RangeBound
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping, create_sink
from cdcd.sinks.timescale import TimescaleSink
from tests.contract import builders

DAY = 86400.0
T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)

# Readings per device (partition key) and time (clustering key); a static column per device.
METRICS = [
    ("device", "text", "partition_key"),
    ("ts", "timestamp", "clustering"),
    ("value", "double", "regular"),
    ("note", "text", "regular"),
    ("site", "text", "static"),
]


@pytest.fixture(autouse=True)
def _timescaledb(timescaledb_available: bool) -> None:
    assert timescaledb_available, "timescaledb is not installed; run `bash deploy/install.sh`"


def schema(cols: list[tuple[str, str, str]], name: str = "m") -> TableSchema:
    return builders.schema(cols, name=name)


def ev(op: Op, key: dict[str, Any], **kw: Any) -> ChangeEvent:
    return builders.ev(op, key, table="ks.m", **kw)


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def mapping(
    source: str = "ks.m", table: str = "m", delete: str = "hard", create: bool = True
) -> TableMapping:
    return TableMapping(source=source, target_schema="ks", target_table=table, delete=delete, create=create)  # type: ignore[arg-type]


def config(dsn: str, **hypertables: HypertableConfig) -> TimescaleDestination:
    return TimescaleDestination(
        dsn=Secret(dsn), pool_size=2, hypertables={k.replace("__", "."): v for k, v in hypertables.items()}
    )


def hyper(column: str = "ts", chunk: float = DAY, **kw: Any) -> HypertableConfig:
    return HypertableConfig(time_column=column, chunk_interval=Duration(chunk), **kw)


MakeSink = Callable[[TimescaleDestination], Awaitable[TimescaleSink]]


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    sinks: list[TimescaleSink] = []

    async def make(cfg: TimescaleDestination) -> TimescaleSink:
        s = create_sink("ts", cfg)
        assert isinstance(s, TimescaleSink)
        sinks.append(s)
        await s.connect()
        await s.healthcheck()
        return s

    yield make
    for s in sinks:
        await s.aclose()


async def hypertables(conn: asyncpg.Connection) -> dict[str, list[tuple[str, str, Any]]]:
    """hypertable -> [(column, type, interval)] of its dimensions."""
    recs = await conn.fetch(
        "SELECT h.hypertable_schema || '.' || h.hypertable_name AS name, d.column_name, d.column_type::text AS type, "
        "d.time_interval::text AS interval FROM timescaledb_information.hypertables h "
        "JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name) "
        "ORDER BY 1, d.dimension_number"
    )
    out: dict[str, list[tuple[str, str, Any]]] = {}
    for r in recs:
        out.setdefault(r["name"], []).append((r["column_name"], r["type"], r["interval"]))
    return out


async def table_rows(conn: asyncpg.Connection, table: str = "ks.m") -> dict[tuple[Any, ...], tuple[Any, ...]]:
    recs = await conn.fetch(f"SELECT device, ts, value, note FROM {table} WHERE NOT _cdc_deleted")
    return {(r["device"], r["ts"]): (r["value"], r["note"]) for r in recs}


async def chunks_of(conn: asyncpg.Connection, table: str = "m") -> int:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'ks' AND hypertable_name = $1",
        table,
    )
    return n


async def test_hypertable_created_side_tables_plain(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    sink = await make_sink(config(pg_dsn, ks__m=hyper(chunk=DAY)))
    assert sink.features is not None and sink.features.license == "apache"
    assert sink.features.version_tuple >= (2, 13)
    await sink.ensure_table(mapping(delete="tombstone"), schema(METRICS))
    assert await hypertables(conn) == {"ks.m": [("ts", "timestamp with time zone", "1 day")]}
    tables = {
        r["t"] for r in await conn.fetch("SELECT tablename AS t FROM pg_tables WHERE schemaname = 'ks'")
    }
    # static side table, history and the offsets table (cdcd.sinks.offsets): plain tables
    assert tables == {"m", "m_static", "m_history", "cdcd_offsets"}
    ext = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert ext == sink.features.version
    m = mapping(delete="tombstone")
    await sink.write(
        m, [ev(Op.INSERT, {"device": "a", "ts": at(d)}, values={"value": 1.0}) for d in range(2)]
    )
    await sink.write(m, [ev(Op.ROW_DELETE, {"device": "a", "ts": at(1)})])
    assert await table_rows(conn) == {("a", at(0)): (1.0, None)}
    hist = await conn.fetch("SELECT _cdc_op, device, ts FROM ks.m_history")
    assert [tuple(r) for r in hist] == [("row_delete", "a", at(1))]


async def test_writes_land_across_chunks(make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection) -> None:
    sink = await make_sink(config(pg_dsn, ks__m=hyper(chunk=DAY)))
    m = mapping()
    await sink.ensure_table(m, schema(METRICS))
    inserts = [
        ev(Op.INSERT, {"device": d, "ts": at(day)}, values={"value": float(day), "note": f"{d}{day}"})
        for d in ("a", "b")
        for day in range(5)
    ]
    static = ev(Op.UPDATE, {"device": "a"}, static=True, values={"site": "north"})
    out = await sink.write(m, [*inserts, static])
    assert (out.applied, out.skipped_stale) == (11, 0)
    assert await chunks_of(conn) == 5
    assert len(await table_rows(conn)) == 10

    w = builders.next_wt()
    changes = [
        ev(Op.UPDATE, {"device": "a", "ts": at(0)}, values={"value": 10.0}),  # partial: note kept
        ev(Op.UPDATE, {"device": "a", "ts": at(4)}, deleted=frozenset({"note"})),
        ev(Op.ROW_DELETE, {"device": "b", "ts": at(1)}),
        ev(Op.INSERT, {"device": "c", "ts": at(9)}, values={"value": 9.0}),  # a new chunk
        ev(Op.RANGE_DELETE, {"device": "b"},
           range=RangeBound(start=(at(2),), start_inclusive=True, end=(at(3),), end_inclusive=True)),
    ]  # fmt: skip
    out = await sink.write(m, changes)
    assert (out.applied, out.skipped_stale) == (5, 0)
    got = await table_rows(conn)
    assert got == {
        ("a", at(0)): (10.0, "a0"),
        ("a", at(1)): (1.0, "a1"),
        ("a", at(2)): (2.0, "a2"),
        ("a", at(3)): (3.0, "a3"),
        ("a", at(4)): (4.0, None),
        ("b", at(0)): (0.0, "b0"),
        ("b", at(4)): (4.0, "b4"),
        ("c", at(9)): (9.0, None),
    }
    assert await chunks_of(conn) == 6

    # Version guard: replaying everything, and older events, changes nothing.
    replay = await sink.write(m, [*inserts, static, *changes])
    assert replay.skipped_stale > 0
    assert await table_rows(conn) == got
    stale = [
        ev(Op.UPDATE, {"device": "a", "ts": at(1)}, wt=w - 10**9, values={"value": -1.0}),
        ev(Op.ROW_DELETE, {"device": "a", "ts": at(2)}, wt=w - 10**9),
        ev(Op.PARTITION_DELETE, {"device": "c"}, wt=w - 10**9),
    ]
    out = await sink.write(m, stale)
    # The update and the row delete are older than their rows (reported per event since the
    # version guards name them); the partition delete removes nothing newer than itself.
    assert [(x.index, x.reason) for x in out.skipped] == [(0, "stale"), (1, "stale")]
    assert out.skipped_stale == 2
    assert await table_rows(conn) == got
    assert await conn.fetchval("SELECT site FROM ks.m_static WHERE device = 'a'") == "north"

    # A partition delete spanning every chunk of device "a" (row and static side table).
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"device": "a"})])
    assert {k[0] for k in await table_rows(conn)} == {"b", "c"}
    assert await conn.fetchval("SELECT count(*) FROM ks.m_static") == 0


async def test_soft_deletes_on_a_hypertable(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    sink = await make_sink(config(pg_dsn, ks__m=hyper(chunk=DAY)))
    m = mapping(delete="soft")
    await sink.ensure_table(m, schema(METRICS))
    await sink.write(
        m, [ev(Op.INSERT, {"device": "a", "ts": at(d)}, values={"value": 1.0}) for d in range(3)]
    )
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"device": "a"})])
    recs = await conn.fetch("SELECT _cdc_deleted, _cdc_deleted_at IS NOT NULL AS stamped FROM ks.m")
    assert [tuple(r) for r in recs] == [(True, True)] * 3
    await sink.write(m, [ev(Op.INSERT, {"device": "a", "ts": at(1)}, values={"value": 2.0})])
    assert await table_rows(conn) == {("a", at(1)): (2.0, None)}


async def test_restart_is_idempotent(make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection) -> None:
    m, sch = mapping(), schema(METRICS)
    first = await make_sink(config(pg_dsn, ks__m=hyper(chunk=DAY)))
    await first.ensure_table(m, sch)
    await first.ensure_table(m, sch)
    await first.write(
        m, [ev(Op.INSERT, {"device": "a", "ts": at(d)}, values={"value": 1.0}) for d in range(3)]
    )
    await first.aclose()
    # A restarted replica (new sink) with a changed chunk interval: same hypertable, data kept,
    # the new interval applies to new chunks.
    second = await make_sink(config(pg_dsn, ks__m=hyper(chunk=2 * DAY)))
    await second.ensure_table(m, sch)
    await second.ensure_table(m, sch)
    assert await hypertables(conn) == {"ks.m": [("ts", "timestamp with time zone", "2 days")]}
    assert len(await table_rows(conn)) == 3
    assert await chunks_of(conn) == 3
    await second.write(m, [ev(Op.UPDATE, {"device": "a", "ts": at(1)}, values={"value": 5.0})])
    assert (await table_rows(conn))[("a", at(1))] == (5.0, None)


async def test_existing_plain_table_with_data_is_converted(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    m, sch = mapping(), schema(METRICS)
    plain = await make_sink(config(pg_dsn))  # first replicated as a plain table
    await plain.ensure_table(m, sch)
    await plain.write(
        m, [ev(Op.INSERT, {"device": "a", "ts": at(d)}, values={"value": 1.0}) for d in range(4)]
    )
    assert await hypertables(conn) == {}
    sink = await make_sink(config(pg_dsn, ks__m=hyper(chunk=DAY)))
    await sink.ensure_table(m, sch)
    assert list(await hypertables(conn)) == ["ks.m"]
    assert await chunks_of(conn) == 4  # migrate_data moved the rows into chunks
    assert len(await table_rows(conn)) == 4


async def test_plain_tables_work_next_to_hypertables(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    sink = await make_sink(config(pg_dsn, ks__m=hyper()))
    other = mapping(source="ks.other", table="other")
    await sink.ensure_table(other, schema(METRICS, name="other"))
    await sink.ensure_table(mapping(), schema(METRICS))
    await sink.write(other, [ev(Op.INSERT, {"device": "x", "ts": at(0)}, values={"value": 3.0})])
    await sink.write(other, [ev(Op.UPDATE, {"device": "x", "ts": at(0)}, values={"note": "n"})])
    assert await table_rows(conn, "ks.other") == {("x", at(0)): (3.0, "n")}
    assert list(await hypertables(conn)) == ["ks.m"]


async def test_date_time_column_in_partition_key(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cols = [("day", "date", "partition_key"), ("sensor", "int", "clustering"), ("value", "double", "regular")]
    sink = await make_sink(config(pg_dsn, ks__m=hyper("day", chunk=7 * DAY)))
    m = mapping()
    await sink.ensure_table(m, schema(cols))
    assert await hypertables(conn) == {"ks.m": [("day", "date", "7 days")]}
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=7 * i) for i in range(3)]
    await sink.write(m, [ev(Op.INSERT, {"day": d, "sensor": 1}, values={"value": 1.0}) for d in days])
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"day": days[1]})])
    assert [r["day"] for r in await conn.fetch("SELECT day FROM ks.m ORDER BY day")] == [days[0], days[2]]
    assert await chunks_of(conn) == 3

    bad = await make_sink(config(pg_dsn, ks__m=hyper("day", chunk=DAY / 2)))
    with pytest.raises(ConfigError, match=r"chunk_interval must be a whole number of days") as exc:
        await bad.ensure_table(m, schema(cols))
    assert exc.value.key == 'destinations.ts.hypertables."ks.m".chunk_interval'


@pytest.mark.parametrize(
    ("cols", "column", "message"),
    [
        (
            [
                ("device", "text", "partition_key"),
                ("seq", "int", "clustering"),
                ("ts", "timestamp", "regular"),
            ],
            "ts",
            r"destination 'ts': hypertable ks\.m \(source ks\.m\): time column 'ts' is not part of the primary "
            r"key \(device, seq\); TimescaleDB needs the time column in the upsert key",
        ),
        (
            [("device", "text", "partition_key"), ("ts", "timestamp", "clustering")],
            "created",
            r"time column 'created' does not exist; columns: device, ts",
        ),
        (
            [("device", "text", "partition_key"), ("ts", "bigint", "clustering")],
            "ts",
            r"time column 'ts' is CQL bigint; a hypertable time column must be CQL timestamp or date",
        ),
        (
            [("device", "text", "partition_key"), ("ts", "timeuuid", "clustering")],
            "ts",
            r"time column 'ts' is CQL timeuuid",
        ),
    ],
)
async def test_refuses_unusable_time_column(
    *, make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection, cols: Any, column: str, message: str
) -> None:
    sink = await make_sink(config(pg_dsn, ks__m=hyper(column)))
    with pytest.raises(SchemaMismatch, match=message):
        await sink.ensure_table(mapping(), schema(cols))
    assert await conn.fetchval("SELECT to_regclass('ks.m')") is None  # refused before creating anything


@pytest.mark.parametrize(
    ("option", "feature"), [("compress_after", "compression"), ("retention", "retention policies")]
)
async def test_refuses_tsl_features_on_apache_build(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection, option: str, feature: str
) -> None:
    cfg = config(pg_dsn, ks__m=hyper(**{option: Duration(30 * DAY)}))
    with pytest.raises(ConfigError) as exc:
        await make_sink(cfg)
    assert exc.value.key == f'destinations.ts.hypertables."ks.m".{option}'
    assert f"destination 'ts': {feature} ({option}) for ks.m is not available" in str(exc.value)
    assert "with license 'apache'" in str(exc.value)
    # ensure_table refuses too (a sink whose connect() was not awaited first), creating nothing.
    sink = create_sink("ts", cfg)
    try:
        with pytest.raises(ConfigError, match=rf"{feature} \({option}\)"):
            await sink.ensure_table(mapping(), schema(METRICS))
    finally:
        await sink.aclose()
    assert await conn.fetchval("SELECT to_regclass('ks.m')") is None


async def test_existing_hypertable_on_another_column_is_refused(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cols = [
        ("device", "text", "partition_key"),
        ("ts", "timestamp", "clustering"),
        ("t2", "timestamp", "clustering"),
    ]
    await (await make_sink(config(pg_dsn, ks__m=hyper("ts")))).ensure_table(mapping(), schema(cols))
    sink = await make_sink(config(pg_dsn, ks__m=hyper("t2")))
    with pytest.raises(SchemaMismatch, match=r"already a hypertable partitioned by time on 'ts'.*'t2'"):
        await sink.ensure_table(mapping(), schema(cols))


async def test_create_tables_off_requires_an_existing_hypertable(
    make_sink: MakeSink, pg_dsn: str, conn: asyncpg.Connection
) -> None:
    plain = await make_sink(config(pg_dsn))
    await plain.ensure_table(mapping(), schema(METRICS))
    sink = await make_sink(config(pg_dsn, ks__m=hyper()))
    with pytest.raises(SchemaMismatch, match=r"ks\.m is not a hypertable and create_tables is off"):
        await sink.ensure_table(mapping(create=False), schema(METRICS))
    await sink.ensure_table(mapping(), schema(METRICS))
    await sink.ensure_table(mapping(create=False), schema(METRICS))  # now it is one
    assert list(await hypertables(conn)) == ["ks.m"]


async def test_extension_that_cannot_be_created_is_a_config_error(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    """A role that may not CREATE EXTENSION in a database without timescaledb: a clear error."""
    role = f"r_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        sink = create_sink("ts", config(pg_dsn.replace("postgres@", f"{role}@", 1)))
        try:
            with pytest.raises(ConfigError) as exc:
                await sink.connect()
        finally:
            await sink.aclose()
        assert exc.value.key == "destinations.ts"
        assert "destination 'ts' (type timescaledb): the timescaledb extension is not available" in str(
            exc.value
        )
        assert "InsufficientPrivilegeError" in str(exc.value)
    finally:
        await conn.execute(f'DROP ROLE "{role}"')
