"""Failure behaviour of the PostgreSQL sink: bad rows isolated with nothing committed, an
unreachable server reported as retriable, and ensure_table refusing what it cannot hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cdcd.errors import BadRows, SchemaMismatch, SinkUnavailable
from cdcd.events import Op, RangeBound
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from tests.conftest import free_port
from tests.contract.test_postgres_sink import SIMPLE, Config, ev, rows, schema, setup


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


async def test_bad_rows_are_named_before_any_round_trip(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    sch = schema(
        [("pk", "text", "partition_key"), ("m", "map<text, int>", "regular"), ("v", "int", "regular")]
    )
    m = await setup(sink, sch, "tombstone")
    batch = [ev(Op.INSERT, {"pk": f"k{i}"}, values={"v": i}) for i in range(10)]
    batch[2] = ev(Op.INSERT, {"pk": "k2"}, values={"m": {"key\x00": 1}})  # NUL in a jsonb object key
    batch[5] = ev(Op.INSERT, {"pk": "k\x005"}, values={"v": 5})  # NUL in a key
    batch[7] = ev(Op.UPDATE, {"pk": "k7"}, values={"dropped_col": 1})  # a column the target lacks
    batch[9] = ev(Op.ROW_DELETE, {"pk": None})  # type: ignore[dict-item]
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert sorted(err.value.errors) == [2, 5, 7, 9]
    assert "NUL" in err.value.errors[2] and "NUL" in err.value.errors[5]
    assert "dropped_col" in err.value.errors[7] and "'pk' is missing" in err.value.errors[9]
    assert await rows(conn) == [] and await conn.fetchval('SELECT count(*) FROM "ks"."t_history"') == 0


async def test_rows_postgresql_refuses_are_found_by_bisection(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    """Every write path (collection read-back, deletes, range deletes, history) takes part; the
    bad events are found, nothing is committed, and the retry of the rest applies them once."""
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("f", "float", "regular"),
                  ("s", "set<int>", "regular")])  # fmt: skip
    m = await setup(sink, sch, "tombstone")
    await sink.write(m, [ev(Op.INSERT, {"pk": 0, "ck": c}, values={"s": [c]}) for c in range(5)])
    batch = []
    for i in range(60):
        k = {"pk": i % 6, "ck": i % 5}
        if i % 10 == 3:
            batch.append(ev(Op.ROW_DELETE, k))
        elif i % 17 == 0:
            rng = RangeBound(start=(3,), start_inclusive=True, end=(), end_inclusive=True)
            batch.append(ev(Op.RANGE_DELETE, {"pk": i % 6}, range=rng))
        else:
            batch.append(ev(Op.UPDATE, k, values={"f": float(i), "s": [i]}))
    # 11: refused by the server (a CHECK constraint a DBA added: SQLSTATE 23514); 44: beyond real,
    # refused by asyncpg's encoder before it reaches the server.
    await conn.execute('ALTER TABLE "ks"."t" ADD CONSTRAINT small CHECK (f < 1e6)')
    bad = {11: 1e7, 44: -1e300}
    for i, value in bad.items():
        batch[i] = ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"f": value})
    before = await rows(conn)
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert sorted(err.value.errors) == sorted(bad)
    assert "violates check constraint" in err.value.errors[11]
    assert "float32" in err.value.errors[44]
    assert await rows(conn) == before
    assert await conn.fetchval('SELECT count(*) FROM "ks"."t_history"') == 0
    good = [e for i, e in enumerate(batch) if i not in bad]
    first = await sink.write(m, good)
    state = await rows(conn)
    history = await conn.fetchval('SELECT count(*) FROM "ks"."t_history"')
    again = await sink.write(m, good)  # the pipeline's retry after a lost acknowledgement
    assert first.applied > 0 and again.applied < first.applied
    assert await rows(conn) == state
    deletes = sum(e.op in (Op.ROW_DELETE, Op.RANGE_DELETE) for e in good)
    assert await conn.fetchval('SELECT count(*) FROM "ks"."t_history"') == history == deletes


async def test_unreachable_server_is_retriable(pg_dsn: str) -> None:
    s = PostgresSink("pg", Config(f"postgresql://postgres@127.0.0.1:{free_port()}/nope"))
    with pytest.raises(SinkUnavailable) as err:
        await s.connect()
    assert err.value.retriable
    await s.aclose()


async def test_server_going_away_mid_flight_is_retriable(sink: PostgresSink, pg_dsn: str) -> None:
    m = await setup(sink, schema(SIMPLE))
    await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v1": "a"})])
    admin = await asyncpg.connect(pg_dsn)
    try:
        # Hold the write inside PostgreSQL (it waits for the table lock), then end its session.
        async with admin.transaction():
            await admin.execute('LOCK TABLE "ks"."t" IN ACCESS EXCLUSIVE MODE')
            write = asyncio.create_task(
                sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 2}, values={"v1": "b"})])
            )
            waiting = "FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            for _ in range(500):
                if await admin.fetchval(f"SELECT count(*) {waiting}"):
                    break
                await asyncio.sleep(0.02)
            assert await admin.fetchval(f"SELECT count(pg_terminate_backend(pid, 10000)) {waiting}") == 1
        with pytest.raises(SinkUnavailable):
            await write
    finally:
        await admin.close()
    # The pool replaces the dead connection; the next attempt succeeds.
    assert (await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 2}, values={"v1": "b"})])).applied == 1


async def test_ensure_table_is_idempotent_and_upgrades_older_tables(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("l", "list<int>", "regular")])
    m = await setup(sink, sch, "tombstone")
    await sink.ensure_table(m, sch)
    await conn.execute('ALTER TABLE "ks"."t" DROP COLUMN _cdc_batch_seq, DROP COLUMN "_cdc_keys_l"')
    await sink.ensure_table(m, sch)  # a table made by an older cdcd gains the new columns
    grown = schema(
        [("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("new", "text", "regular")]
    )
    await sink.ensure_table(m, grown)  # the source gained a column
    await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={"l": {uuid.uuid1(): 5}, "new": "n"})])
    (row,) = await rows(conn)
    assert (row["l"], row["new"], row["_cdc_batch_seq"]) == ([5], "n", 0)


async def test_ensure_table_refuses_what_it_cannot_hold(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    sch = schema([("pk", "int", "partition_key"), ("v", "int", "regular")])
    absent = TableMapping(source="ks.t", target_schema="ks", target_table="absent", create=False)
    with pytest.raises(SchemaMismatch, match="does not exist"):
        await sink.ensure_table(absent, sch)
    await conn.execute("CREATE SCHEMA ks; CREATE TABLE ks.t (pk integer PRIMARY KEY, v text)")
    with pytest.raises(SchemaMismatch, match=r"ks\.t\.v is text, expected integer"):
        await setup(sink, sch)
    clash = schema([("pk", "int", "partition_key"), ("_cdc_deleted", "int", "regular")])
    with pytest.raises(SchemaMismatch, match="clash"):
        await setup(sink, clash)
    with pytest.raises(SchemaMismatch, match="ensure_table was not called"):
        await sink.write(TableMapping(source="ks.other", target_schema="ks", target_table="o"), [])


@pytest.mark.parametrize(
    ("target_schema", "target_table", "column"),
    [
        ('a"; DROP SCHEMA public CASCADE; --', "t", "v"),
        ("ks", "t; DELETE FROM pg_class", "v"),
        ("ks", "t", "v) VALUES (1); DROP TABLE x; --"),
        ("ks", "t", "$1"),
    ],
)
async def test_injection_attempts_stay_names(
    sink: PostgresSink, conn: asyncpg.Connection, target_schema: str, target_table: str, column: str
) -> None:
    sch = schema([("pk", "text", "partition_key"), (column, "text", "regular")])
    m = TableMapping(source="ks.t", target_schema=target_schema, target_table=target_table, delete="soft")
    await sink.ensure_table(m, sch)
    evil = "'); DROP TABLE t; --"
    await sink.write(m, [ev(Op.INSERT, {"pk": evil}, values={column: evil}), ev(Op.ROW_DELETE, {"pk": evil})])
    q = '"' + column.replace('"', '""') + '"'
    table = '"' + target_schema.replace('"', '""') + '"."' + target_table.replace('"', '""') + '"'
    assert await conn.fetch(f"SELECT pk, {q} AS v, _cdc_deleted FROM {table}") == [(evil, evil, True)]
    assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == 1
