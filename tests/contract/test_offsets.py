"""The offsets table of each destination (``cdcd.sinks.offsets``): PostgreSQL records the applied
positions in the data's transaction (both or neither), ClickHouse inserts them after the data
under the batch's token (a retried batch records nothing twice; failed data records nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cdcd.errors import BadRows, SchemaMismatch, SinkUnavailable
from cdcd.events import Op, Position
from cdcd.scylla.windows import min_timeuuid
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse import ClickHouseSink
from cdcd.sinks.offsets import Applied, floor_applied
from cdcd.sinks.postgres import PostgresSink
from tests.contract import test_clickhouse_sink as chs
from tests.contract.builders import STREAM, schema
from tests.contract.test_postgres_sink import SIMPLE, ev, rows

GEN = 1_690_000_000_000
OTHER = b"\x02" * 16


def at(stream: bytes, ms: int) -> Position:
    """The position of a CDC log group written ``ms`` milliseconds into the generation."""
    return Position(generation=GEN, stream_id=stream, time=min_timeuuid((GEN + ms) * 1000))


def applied(*positions: Position, start_ms: int = GEN) -> Applied:
    return Applied(positions={p.stream_id: p for p in positions}, start_ms=start_ms)


# ------------------------------------------------------------------------------------ PostgreSQL
class PgConfig:
    def __init__(self, dsn: str, **kw: Any) -> None:
        self.kind = "postgres"
        self.dsn = dsn
        self.pool_size = 2
        for k, v in kw.items():
            setattr(self, k, v)


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", PgConfig(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


async def pg_setup(sink: PostgresSink, delete: str = "hard", create: bool = True) -> TableMapping:
    m = TableMapping(source="ks.t", target_schema="ks", target_table="t", delete=delete, create=create)  # type: ignore[arg-type]
    await sink.ensure_table(m, schema(SIMPLE))
    return m


async def offsets(conn: asyncpg.Connection, table: str = '"ks"."cdcd_offsets"') -> list[tuple[Any, ...]]:
    recs = await conn.fetch(
        f"SELECT destination, source_table, generation, stream_id, position, start_ms FROM {table} ORDER BY stream_id"
    )
    return [tuple(r) for r in recs]


async def test_pg_positions_commit_with_the_data_and_are_read_back(
    pg: PostgresSink, conn: asyncpg.Connection
) -> None:
    m = await pg_setup(pg, "tombstone")
    batch = [ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v1": str(i)}) for i in range(5)]
    batch.append(ev(Op.ROW_DELETE, {"pk": 1, "ck": 0}))
    p1, p2 = at(STREAM, 10), at(OTHER, 12)
    assert (await pg.write(m, batch, applied(p1, p2, start_ms=GEN + 5))).applied == 6
    assert len(await rows(conn)) == 4
    assert await offsets(conn) == [
        ("pg", "ks.t", GEN, STREAM, p1.time, GEN + 5),
        ("pg", "ks.t", GEN, OTHER, p2.time, GEN + 5),
    ]
    assert await pg.load_applied(m, GEN, [STREAM, OTHER, b"\x09" * 16]) == {STREAM: p1, OTHER: p2}
    assert await pg.load_applied(m, GEN + 1, [STREAM]) == {}  # another generation: nothing recorded
    assert await pg.applied_start(m) == GEN + 5
    # The replayed batch (a crash before the Redis checkpoint) records the same, applies nothing.
    before = await rows(conn)
    await pg.write(m, batch, applied(p1, p2, start_ms=GEN + 5))
    assert await rows(conn) == before
    assert len(await offsets(conn)) == 2
    assert await conn.fetchval('SELECT count(*) FROM "ks"."t_history"') == 1


async def test_pg_positions_and_data_commit_together_or_not_at_all(
    pg: PostgresSink, conn: asyncpg.Connection
) -> None:
    """The offsets upsert fails (a trigger raises a serialization failure, as a concurrent
    transaction could): the batch's rows are rolled back with it, and the retry commits both."""
    m = await pg_setup(pg)
    await conn.execute(
        "CREATE FUNCTION ks.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'refused' USING ERRCODE = '40001'; END $$"
    )
    await conn.execute(
        'CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON "ks"."cdcd_offsets" FOR EACH ROW EXECUTE FUNCTION ks.refuse()'
    )
    batch = [ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v1": str(i)}) for i in range(5)]
    with pytest.raises(SinkUnavailable):
        await pg.write(m, batch, applied(at(STREAM, 10)))
    assert await rows(conn) == [] and await offsets(conn) == []
    # Without positions the same write commits its rows: the trigger was the only obstacle.
    await conn.execute('DROP TRIGGER refuse ON "ks"."cdcd_offsets"')
    assert (await pg.write(m, batch, applied(at(STREAM, 10)))).applied == 5
    assert len(await rows(conn)) == 5 and len(await offsets(conn)) == 1
    # A batch refused for its data (bad rows, bisected) records no position either.
    await conn.execute('ALTER TABLE "ks"."t" ADD CONSTRAINT small CHECK (v2 IS NULL OR v2 < 1000)')
    bad = [ev(Op.INSERT, {"pk": 9, "ck": 0}, values={"v2": 5000})]
    with pytest.raises(BadRows):
        await pg.write(m, bad, applied(at(STREAM, 20)))
    assert await pg.load_applied(m, GEN, [STREAM]) == {STREAM: at(STREAM, 10)}


async def test_pg_positions_alone_never_move_backwards(pg: PostgresSink, conn: asyncpg.Connection) -> None:
    m = await pg_setup(pg)
    await pg.record_applied(m, applied(at(STREAM, 30)))
    await pg.write(m, [], applied(at(STREAM, 20), at(OTHER, 5)))  # no events: positions alone
    assert await pg.load_applied(m, GEN, [STREAM, OTHER]) == {STREAM: at(STREAM, 30), OTHER: at(OTHER, 5)}
    await pg.record_applied(m, applied(at(STREAM, 40)))
    assert (await pg.load_applied(m, GEN, [STREAM]))[STREAM] == at(STREAM, 40)
    with pytest.raises(ValueError, match="span generations"):
        await pg.record_applied(m, Applied(positions={STREAM: at(STREAM, 1), OTHER: Position(
            generation=GEN + 1, stream_id=OTHER, time=at(OTHER, 1).time)}, start_ms=GEN))  # fmt: skip


async def test_pg_offsets_table_location_is_configurable_and_checked(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    sink = PostgresSink("pg2", PgConfig(pg_dsn, offsets_schema="cdcd state", offsets_table="Applied"))
    try:
        m = await pg_setup(sink)
        await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 0}, values={"v1": "a"})], applied(at(STREAM, 3)))
        assert await offsets(conn, '"cdcd state"."Applied"') == [
            ("pg2", "ks.t", GEN, STREAM, at(STREAM, 3).time, GEN)
        ]
    finally:
        await sink.aclose()
    # create_tables off and no offsets table: refused, naming the DDL to run.
    other = PostgresSink("pg3", PgConfig(pg_dsn, offsets_table="missing"))
    try:
        with pytest.raises(
            SchemaMismatch,
            match=r'offsets table ks\.missing does not exist .*CREATE TABLE IF NOT EXISTS "ks"\."missing"',
        ):
            await pg_setup(other, create=False)
    finally:
        await other.aclose()


# ------------------------------------------------------------------------------------ ClickHouse
async def ch_offsets(ch: Any, db: str, final: bool = True) -> list[tuple[Any, ...]]:
    res = await ch.query(
        f"SELECT destination, source_table, generation, stream_id, position, start_ms "
        f"FROM `{db}`.cdcd_offsets {'FINAL' if final else ''} ORDER BY stream_id"
    )
    return [tuple(r) for r in res.result_rows]


async def test_ch_positions_follow_the_data_once(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    m = await chs.setup(sink, ch_database, schema(SIMPLE), "tombstone")
    batch = [chs.ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v1": str(i)}) for i in range(20)]
    batch.append(chs.ev(Op.ROW_DELETE, {"pk": 3, "ck": 0}))
    p1, p2 = at(STREAM, 10), at(OTHER, 12)
    await sink.write(m, batch, applied(p1, p2, start_ms=GEN + 7))
    assert await ch_offsets(ch, ch_database) == [
        ("ch", "ks.t", GEN, STREAM.hex(), p1.time, GEN + 7),
        ("ch", "ks.t", GEN, OTHER.hex(), p2.time, GEN + 7),
    ]
    assert await sink.load_applied(m, GEN, [STREAM, OTHER]) == {STREAM: p1, OTHER: p2}
    assert await sink.applied_start(m) == GEN + 7
    physical = [await chs.count(ch, ch_database, t) for t in ("t", "t_history", "cdcd_offsets")]
    # The same batch retried (its answer was lost, or a crash came before the Redis checkpoint):
    # the version guard skips the data and the token drops the offsets block.
    await sink.write(m, batch, applied(p1, p2, start_ms=GEN + 7))
    # Even the raw offsets insert of the retry (the version guard bypassed) is dropped by its token.
    from cdcd.sinks.clickhouse.wire import batch_token

    await sink.record_applied(m, applied(p1, p2, start_ms=GEN + 7), batch_token(m, batch))
    assert [await chs.count(ch, ch_database, t) for t in ("t", "t_history", "cdcd_offsets")] == physical


async def test_ch_failed_data_records_no_position_and_positions_never_move_back(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    m = await chs.setup(sink, ch_database, schema(SIMPLE))
    await ch.command(f"ALTER TABLE `{ch_database}`.`t` ADD CONSTRAINT small CHECK v2 IS NULL OR v2 < 1000")
    batch = [chs.ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v2": i}) for i in range(10)]
    batch[4] = chs.ev(Op.INSERT, {"pk": 4, "ck": 0}, values={"v2": 5000})
    with pytest.raises(BadRows):
        await sink.write(m, batch, applied(at(STREAM, 50)))
    assert await chs.count(ch, ch_database) == 0 and await chs.count(ch, ch_database, "cdcd_offsets") == 0
    good = [e for i, e in enumerate(batch) if i != 4]
    await sink.write(m, good, applied(at(STREAM, 50)))
    await sink.write(m, [], applied(at(STREAM, 40)))  # an older position recorded later
    assert await sink.load_applied(m, GEN, [STREAM]) == {STREAM: at(STREAM, 50)}
    await sink.record_applied(m, applied(at(STREAM, 60)))
    assert await sink.load_applied(m, GEN, [STREAM]) == {STREAM: at(STREAM, 60)}


async def test_ch_offsets_table_must_exist_when_create_is_off(
    sink: ClickHouseSink, clickhouse_url: str, ch_database: str
) -> None:
    await chs.setup(sink, ch_database, schema(SIMPLE))  # the data tables exist
    cfg = chs.Config(clickhouse_url)
    cfg.offsets_table = "nope"  # type: ignore[attr-defined]
    other = ClickHouseSink("ch", cfg)
    try:
        m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t", create=False)
        with pytest.raises(SchemaMismatch, match=f"{ch_database}.nope does not exist"):
            await other.ensure_table(m, schema(SIMPLE))
    finally:
        await other.aclose()


sink = chs.sink  # the ClickHouse sink fixture


async def test_the_start_floor_is_kept_before_anything_is_applied(
    pg: PostgresSink, sink: ClickHouseSink, ch_database: str
) -> None:
    """``floor_applied``: the floor recorded when a table is set up is what ``applied_start``
    gives while nothing was applied (Redis lost it before the first write); the rows of a real
    generation take precedence once written; positions of real streams are not affected."""
    pm = await pg_setup(pg)
    cm = await chs.setup(sink, ch_database, schema(SIMPLE))
    for dest, m in ((pg, pm), (sink, cm)):
        assert await dest.applied_start(m) is None
        await dest.record_applied(m, floor_applied(GEN + 3))
        assert await dest.applied_start(m) == GEN + 3
        assert await dest.load_applied(m, GEN, [STREAM]) == {}
        await dest.record_applied(m, applied(at(STREAM, 9), start_ms=GEN + 5))
        assert await dest.applied_start(m) == GEN + 5
        assert await dest.load_applied(m, GEN, [STREAM]) == {STREAM: at(STREAM, 9)}
