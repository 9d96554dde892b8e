"""Deletes through the PostgreSQL sink: clustering ranges in CQL order for every kind of clustering
column, static rows, write-time guards, and row/partition/range deletes x hard/soft/tombstone."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from cdcd.events import Op, RangeBound
from cdcd.sinks.postgres import PostgresSink
from tests.contract.test_postgres_sink import Config, ev, rows, schema, setup


def tu(t: int) -> uuid.UUID:
    return uuid.UUID(fields=(t & 0xFFFFFFFF, (t >> 32) & 0xFFFF, ((t >> 48) & 0x0FFF) | 0x1000, 0x80, 0, 1))


# Values listed in CQL ascending order; for several PostgreSQL's own order differs.
DOMAINS: dict[str, list[Any]] = {
    "int": [-5, 0, 3],
    "text": ["A", "a", "é"],  # byte order; linguistic collations put "a" first
    "timeuuid": [tu(5), tu(2**32), tu(2**33 + 1)],  # time order; byte order is 2, 3, 1
    "inet": ["::1", "1.0.0.0", "10.0.0.1"],  # CQL compares address bytes; PostgreSQL puts IPv4 first
    "blob": [b"", b"\x00", b"\x01"],
    "frozen<list<int>>": [[], [1], [1, 0]],
    "tuple<int, text>": [(None, "z"), (1, None), (1, "a")],
}


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


def in_range(
    row: tuple[int, int], rng: tuple[tuple[int, ...], bool, tuple[int, ...], bool], desc: tuple[bool, ...]
) -> bool:
    """Reference in clustering ranks: is the row (rank of c1, rank of c2) inside the range?"""

    def cmp(bound: tuple[int, ...]) -> int:
        for i, b in enumerate(bound):
            if row[i] != b:
                r = -1 if row[i] < b else 1
                return -r if desc[i] else r
        return 0

    start, start_incl, end, end_incl = rng
    if start and (cmp(start) < 0 or (cmp(start) == 0 and not start_incl)):
        return False
    return not (end and (cmp(end) > 0 or (cmp(end) == 0 and not end_incl)))


@pytest.mark.parametrize("order", [("asc", "asc"), ("desc", "asc"), ("asc", "desc")])
@pytest.mark.parametrize("ctype", list(DOMAINS))
async def test_range_deletes_follow_cql_clustering_order(
    sink: PostgresSink, conn: asyncpg.Connection, ctype: str, order: tuple[str, str]
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("c1", ctype, "clustering"), ("c2", "int", "clustering"),
                  ("v", "text", "regular")], order=order)  # fmt: skip
    m = await setup(sink, sch)
    dom, ints = DOMAINS[ctype], DOMAINS["int"]
    rnd = random.Random(f"{ctype}{order}")
    ranges = []
    for _ in range(16):
        lens = rnd.randint(0, 2), rnd.randint(0, 2)
        start = tuple(rnd.randrange(3) for _ in range(lens[0]))
        end = tuple(rnd.randrange(3) for _ in range(lens[1]))
        ranges.append((start, rnd.random() < 0.5, end, rnd.random() < 0.5))
    grid = [(a, b) for a in range(3) for b in range(3)]
    await sink.write(m, [ev(Op.INSERT, {"pk": p, "c1": dom[a], "c2": ints[b]}, values={"v": f"{a}{b}"})
                         for p in range(len(ranges)) for a, b in grid])  # fmt: skip

    def values(ranks: tuple[int, ...]) -> tuple[Any, ...]:
        return tuple((dom if i == 0 else ints)[r] for i, r in enumerate(ranks))

    deletes = [
        ev(Op.RANGE_DELETE, {"pk": p}, range=RangeBound(start=values(s), start_inclusive=si, end=values(e), end_inclusive=ei))
        for p, (s, si, e, ei) in enumerate(ranges)
    ]  # fmt: skip
    await sink.write(m, deletes)
    desc = (order[0] == "desc", order[1] == "desc")
    want = sorted(
        (p, f"{a}{b}") for p, rng in enumerate(ranges) for a, b in grid if not in_range((a, b), rng, desc)
    )
    got = sorted((r["pk"], r["v"]) for r in await conn.fetch('SELECT pk, v FROM "ks"."t"'))
    assert got == want


@pytest.mark.parametrize("strategy", ["hard", "soft", "tombstone"])
async def test_static_rows_follow_partition_deletes(
    sink: PostgresSink, conn: asyncpg.Connection, strategy: str
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("s1", "text", "static"),
                  ("s2", "int", "static"), ("v", "int", "regular")])  # fmt: skip
    m = await setup(sink, sch, strategy)
    await sink.write(m, [
        ev(Op.UPDATE, {"pk": 1}, static=True, values={"s1": "a", "s2": 1}),
        ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": 1}),
        # A row delete leaves the partition's static row alone.
        ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}),
        ev(Op.UPDATE, {"pk": 2}, static=True, values={"s1": "b"}),
    ])  # fmt: skip
    live = "WHERE NOT _cdc_deleted"
    assert [(r["pk"], r["s1"], r["s2"]) for r in await rows(conn, "ks.t_static", live)] == [
        (1, "a", 1),
        (2, "b", None),
    ]
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"pk": 1})])
    assert [r["pk"] for r in await rows(conn, "ks.t_static", live)] == [2]
    # A later static write revives the partition's static row with only its own cells.
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, static=True, values={"s2": 5})])
    assert [(r["pk"], r["s1"], r["s2"]) for r in await rows(conn, "ks.t_static", live)] == [
        (1, None, 5),
        (2, "b", None),
    ]
    if strategy == "soft":
        assert await rows(conn, "ks.t", live) == [] and len(await rows(conn)) == 1
    if strategy == "tombstone":
        ops = await conn.fetch('SELECT _cdc_op, pk, ck FROM "ks"."t_history" ORDER BY _cdc_write_time')
        assert [tuple(r) for r in ops] == [("row_delete", 1, 1), ("partition_delete", 1, None)]


@pytest.mark.parametrize("strategy", ["hard", "soft", "tombstone"])
async def test_deletes_older_than_the_row_change_nothing(
    sink: PostgresSink, conn: asyncpg.Connection, strategy: str
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("s", "int", "static"),
                  ("v", "int", "regular")])  # fmt: skip
    m = await setup(sink, sch, strategy)
    await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": c}, wt=2000 + c, values={"v": c}) for c in range(3)]
                     + [ev(Op.UPDATE, {"pk": 1}, static=True, wt=2000, values={"s": 9})])  # fmt: skip
    await sink.write(m, [
        ev(Op.ROW_DELETE, {"pk": 1, "ck": 0}, wt=1000),
        ev(Op.RANGE_DELETE, {"pk": 1}, wt=2001,
           range=RangeBound(start=(), start_inclusive=True, end=(), end_inclusive=True)),
        ev(Op.PARTITION_DELETE, {"pk": 1}, wt=1999),
    ])  # fmt: skip
    live = "WHERE NOT _cdc_deleted"
    # The range delete at 2001 removed ck 0 and 1 (written at 2000, 2001: a tombstone wins ties).
    assert [(r["ck"], r["v"]) for r in await rows(conn, where=live)] == [(2, 2)]
    assert [r["s"] for r in await rows(conn, "ks.t_static", live)] == [9]


async def test_soft_deleted_row_ignores_replays_and_revives_on_newer_writes(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("l", "list<int>", "regular")])
    m = await setup(sink, sch, "soft")
    insert = ev(Op.INSERT, {"pk": 1}, values={"v": "a", "l": {tu(1): 1}})
    delete = ev(Op.ROW_DELETE, {"pk": 1})
    await sink.write(m, [insert])
    await sink.write(m, [delete])
    out = await sink.write(m, [insert])  # replayed after the delete: stale
    assert out.skipped_stale == 1
    (row,) = await rows(conn)
    assert (row["v"], row["l"], row["_cdc_deleted"]) == ("a", [1], True)
    # A newer collection append starts from an empty list: the deleted row's cells are gone.
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, values={"l": {tu(2): 2}})])
    (row,) = await rows(conn)
    assert (row["v"], row["l"], row["_cdc_deleted"], row["_cdc_deleted_at"]) == (None, [2], False, None)


async def test_a_cdc_group_split_across_writes_keeps_its_later_rows(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    """A TTL'd UPDATE writing live and dead cells is logged as two rows with one cdc$time; the
    pipeline may cut its batch between them."""
    sch = schema([("pk", "int", "partition_key"), ("a", "int", "regular"), ("b", "int", "regular")])
    m = await setup(sink, sch)
    first = ev(Op.UPDATE, {"pk": 1}, wt=5000, deleted=frozenset({"b"}))
    second = msgspec.structs.replace(ev(Op.UPDATE, {"pk": 1}, wt=5000, values={"a": 1}), batch_seq=1)
    assert (await sink.write(m, [first])).applied == 1
    assert (await sink.write(m, [second])).applied == 1
    assert [(r["a"], r["b"]) for r in await rows(conn)] == [(1, None)]
    replay = await sink.write(m, [first, second])
    assert (replay.applied, replay.skipped_stale) == (0, 2)
