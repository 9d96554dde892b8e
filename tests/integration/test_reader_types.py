"""End to end decoding through the real driver: CQL writes -> emulator CDC log -> GroupReader events."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.events import ChangeEvent, CqlDuration, Op, RangeBound
from cdcd.scylla import GroupReader, ReaderConfig, ScyllaSession, StreamDiscovery

FAST = ReaderConfig(
    confidence_window_s=0.5, window_s=1.0, max_window_s=10.0, poll_interval_s=0.1, generation_poll_s=0.2
)
TS = datetime.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=datetime.UTC)


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        await session.execute(
            "CREATE KEYSPACE ks WITH replication = "
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        yield session
    finally:
        await session.aclose()


async def read_all(s: ScyllaSession, table: str, count: int) -> list[ChangeEvent]:
    """Every event of the table (all groups), until ``count`` arrived."""
    import asyncio

    d = StreamDiscovery(s)
    groups = await d.groups(table, since_ms=0, ttl_s=0)
    events: list[ChangeEvent] = []

    async def run(g: Any) -> None:
        async for b in GroupReader(s, d, g, config=FAST, start_floor_ms=0).read({}):
            events.extend(b.events)

    tasks = [asyncio.create_task(run(g)) for g in groups]
    try:
        async with asyncio.timeout(30):
            while len(events) < count:
                for t in tasks:
                    if t.done() and t.exception():
                        raise t.exception()  # type: ignore[misc]
                await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return sorted(events, key=lambda e: (e.write_time_us, e.batch_seq))


async def test_atomic_types_keys_and_static_rows(scylla: ScyllaSession) -> None:
    await scylla.execute(
        "CREATE TABLE ks.a (pk int, ck timestamp, s text static, d date, tm time, du duration, "
        "dec decimal, tup tuple<int, text>, b blob, u uuid, PRIMARY KEY (pk, ck)) "
        "WITH cdc = {'enabled': true}"
    )
    uid = uuid.uuid4()
    await scylla.execute(
        "INSERT INTO ks.a (pk, ck, s, d, tm, du, dec, tup, b, u) VALUES "
        f"(1, '2024-05-01 12:00:00.123+0000', 'st', '2024-02-29', '01:02:03.000000004', 1mo2d3ns, 1.50, "
        f"(7, 'x'), 0xff00, {uid})"
    )
    await scylla.execute("UPDATE ks.a SET d = null WHERE pk = 1 AND ck = '2024-05-01 12:00:00.123+0000'")
    static, ins, upd = await read_all(scylla, "ks.a", 3)
    assert (
        static.static and static.op is Op.UPDATE and static.key == {"pk": 1} and static.values == {"s": "st"}
    )
    assert ins.op is Op.INSERT and ins.key == {"pk": 1, "ck": TS}
    assert ins.values == {
        "d": datetime.date(2024, 2, 29),
        "tm": 3_723_000_000_004,
        "du": CqlDuration(1, 2, 3),
        "dec": decimal.Decimal("1.50"),
        "tup": (7, "x"),
        "b": b"\xff\x00",
        "u": uid,
    }
    assert static.pos == ins.pos and (static.batch_seq, ins.batch_seq) == (0, 1)
    assert upd.op is Op.UPDATE and upd.deleted == frozenset({"d"}) and upd.values == {}


async def test_collections_udts_and_deletes(scylla: ScyllaSession) -> None:
    await scylla.execute("CREATE TYPE ks.ut (a int, b text)")
    await scylla.execute(
        "CREATE TABLE ks.c (pk int, ck int, m map<int, text>, l list<int>, st set<text>, u ut, "
        "fu frozen<ut>, "
        "PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true, 'preimage': true, 'postimage': true}"
    )
    await scylla.execute(
        "INSERT INTO ks.c (pk, ck, m, l, st, u, fu) "
        "VALUES (1, 1, {1: 'a'}, [10, 20], {'x'}, {a: 1, b: 'b'}, {a: 2})"
    )
    await scylla.execute(
        "UPDATE ks.c SET m = m + {2: 'b'}, l = l + [30], st = st - {'x'}, u.a = 5 WHERE pk = 1 AND ck = 1"
    )
    await scylla.execute("DELETE FROM ks.c WHERE pk = 1 AND ck > 5 AND ck <= 9")
    await scylla.execute("DELETE FROM ks.c WHERE pk = 1 AND ck = 1")
    ins, upd, rng, dele = await read_all(scylla, "ks.c", 4)

    assert ins.op is Op.INSERT and ins.deleted == frozenset({"m", "l", "st", "u"})  # overwrite = clear + add
    assert ins.values["m"] == {1: "a"} and ins.values["st"] == ["x"]
    assert list(ins.values["l"].values()) == [10, 20] and all(
        isinstance(k, uuid.UUID) for k in ins.values["l"]
    )
    assert ins.values["u"] == {"a": 1, "b": "b"} and ins.values["fu"] == {"a": 2, "b": None}
    assert ins.preimage is None
    assert ins.postimage is not None and ins.postimage["l"] == [10, 20] and ins.postimage["m"] == {1: "a"}

    assert upd.op is Op.UPDATE and upd.values["m"] == {2: "b"} and list(upd.values["l"].values()) == [30]
    assert upd.values["u"] == {"a": 5} and upd.deleted_elements == {"st": ["x"]}
    assert upd.preimage is not None and upd.preimage["m"] == {1: "a"}
    assert (
        upd.postimage is not None
        and upd.postimage["m"] == {1: "a", 2: "b"}
        and upd.postimage["l"] == [10, 20, 30]
    )
    assert upd.postimage["u"] == {"a": 5, "b": "b"}

    assert rng.op is Op.RANGE_DELETE and rng.key == {"pk": 1}
    assert rng.range == RangeBound(start=(5,), start_inclusive=False, end=(9,), end_inclusive=True)

    assert dele.op is Op.ROW_DELETE and dele.key == {"pk": 1, "ck": 1}
    assert dele.preimage is not None and dele.preimage["fu"] == {"a": 2, "b": None}


async def test_schema_changes_while_reading(scylla: ScyllaSession) -> None:
    await scylla.execute(
        "CREATE TABLE ks.e (pk int PRIMARY KEY, v int, gone int) WITH cdc = {'enabled': true}"
    )
    await scylla.execute("INSERT INTO ks.e (pk, v, gone) VALUES (1, 1, 1)")
    import asyncio

    d = StreamDiscovery(scylla)
    groups = await d.groups("ks.e", since_ms=0, ttl_s=0)
    events: list[ChangeEvent] = []

    async def run(g: Any) -> None:
        async for b in GroupReader(scylla, d, g, config=FAST, start_floor_ms=0).read({}):
            events.extend(b.events)

    tasks = [asyncio.create_task(run(g)) for g in groups]
    try:
        async with asyncio.timeout(30):
            while not events:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await scylla.execute("ALTER TABLE ks.e ADD w text")
            await scylla.execute("ALTER TABLE ks.e DROP gone")
            await scylla.execute("INSERT INTO ks.e (pk, v, w) VALUES (2, 2, 'new')")
            while len(events) < 2:
                for t in tasks:
                    if t.done() and t.exception():
                        raise t.exception()  # type: ignore[misc]
                await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first, second = sorted(events, key=lambda e: e.write_time_us)
    assert first.values == {"v": 1, "gone": 1}
    assert second.values == {"v": 2, "w": "new"}
