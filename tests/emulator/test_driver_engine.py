"""The emulator (protocol server + real engine) through the real driver with default settings:
connect, statements with bound values of every type, paging, batches, USE, errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from cassandra import AlreadyExists, ConsistencyLevel, InvalidRequest
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.protocol import SyntaxException
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from cassandra.util import Date, Duration, SortedSet, Time

from tests.scylla_emulator.bulk import bulk_load

KS = "CREATE KEYSPACE {} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}}"


@pytest.fixture
def cluster(emulator: Any) -> Iterator[Cluster]:
    c = Cluster([emulator.host], port=emulator.port)
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def session(cluster: Cluster) -> Any:
    s = cluster.connect()
    s.execute(KS.format("ks"))
    return s


def test_default_cluster_connects_as_scylla(cluster: Cluster, emulator: Any) -> None:
    session = cluster.connect()
    assert cluster.protocol_version == 4
    hosts = cluster.metadata.all_hosts()
    assert [h.endpoint.address for h in hosts] == [emulator.host]
    assert hosts[0].sharding_info is not None and hosts[0].sharding_info.shards_count == 2
    assert cluster.metadata.partitioner == "org.apache.cassandra.dht.Murmur3Partitioner"
    assert len(cluster.metadata.token_map.ring) == 8  # the emulator's vnodes
    row = session.execute("SELECT release_version, cluster_name FROM system.local WHERE key = 'local'").one()
    assert row.release_version and row.cluster_name


TYPED = """CREATE TABLE ks.typed (
    k int PRIMARY KEY, a ascii, bi bigint, bl blob, bo boolean, de decimal, do double, fl float,
    ip inet, sm smallint, ti tinyint, te text, ts timestamp, tu timeuuid, uu uuid, vi varint,
    da date, tm time, du duration, li list<int>, se set<text>, ma map<text, int>,
    fl_li frozen<list<int>>, tp tuple<int, text>, ud frozen<addr>, nested map<int, frozen<set<text>>>)"""
TYPED_VALUES: dict[str, Any] = {
    "a": "ascii", "bi": -(2**63), "bl": b"\x00\x01\xff", "bo": True, "de": Decimal("3.14159"),
    "do": 2.5, "fl": 0.5, "ip": "192.168.1.1", "sm": -5, "ti": 7, "te": "zażółć",
    "ts": datetime(2023, 1, 2, 3, 4, 5, 678000), "tu": uuid.UUID("c3b851fe-6d0c-11ea-3f9b-422e11ed8da0"),
    "uu": uuid.UUID("01234567-89ab-cdef-0123-456789abcdef"), "vi": -(10**25), "da": Date(18000),
    "tm": Time(12 * 3600 * 10**9 + 1), "du": Duration(1, 2, 3_000_000_000), "li": [3, 1, 2],
    "se": SortedSet(["x", "y"]), "ma": {"one": 1, "two": 2}, "fl_li": [9, 8], "tp": (1, "one"),
    "nested": {1: SortedSet(["a"])},
}  # fmt: skip


def _create_typed(session: Any) -> None:
    session.execute("CREATE TYPE ks.addr (street text, no int)")
    session.execute(TYPED)


def test_prepared_values_of_every_type_round_trip(session: Any) -> None:
    _create_typed(session)
    addr = session.cluster.metadata.keyspaces["ks"].user_types["addr"]
    assert addr.field_names == ["street", "no"]
    cols = ["k", *TYPED_VALUES, "ud"]
    insert = session.prepare(
        f"INSERT INTO ks.typed ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    )
    assert insert.routing_key_indexes == [0]
    ud = ("Main", 5)  # a UDT binds from a tuple (or an object with the field attributes)
    session.execute(insert, [1, *TYPED_VALUES.values(), ud])
    select = session.prepare("SELECT * FROM ks.typed WHERE k = ?")
    row = session.execute(select, [1]).one()
    for name, value in TYPED_VALUES.items():
        assert getattr(row, name) == value, name
    assert (row.ud.street, row.ud.no) == ("Main", 5)
    # The same values through a simple statement with client-side literals
    session.execute(
        "INSERT INTO ks.typed (k, a, bi, te, li, ma, de) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (2, "x", 5, "y", [1], {"k": 2}, Decimal("1.5")),
    )
    row2 = session.execute("SELECT a, bi, te, li, ma, de FROM ks.typed WHERE k = 2").one()
    assert tuple(row2) == ("x", 5, "y", [1], {"k": 2}, Decimal("1.5"))
    assert session.execute(select, [3]).one() is None


def test_nulls_unset_and_collection_updates(session: Any) -> None:
    session.execute("CREATE TABLE ks.c (k int PRIMARY KEY, v int, w int, s set<int>)")
    ps = session.prepare("INSERT INTO ks.c (k, v, w) VALUES (?, ?, ?)")
    session.execute(ps, [1, 10, 20])
    from cassandra.query import UNSET_VALUE

    session.execute(ps, [1, None, UNSET_VALUE])  # null deletes v, unset leaves w alone
    session.execute("UPDATE ks.c SET s = s + {3, 1} WHERE k = 1")
    row = session.execute("SELECT v, w, s FROM ks.c WHERE k = 1").one()
    assert (row.v, row.w, row.s) == (None, 20, SortedSet([1, 3]))


def test_paging_20k_rows_returns_each_row_exactly_once(emulator: Any, session: Any) -> None:
    session.execute("CREATE TABLE ks.big (p int, c int, v text, PRIMARY KEY (p, c))")
    rows = [(i % 37, i, f"v{i}") for i in range(20000)]
    # 2000 rows through the driver (pipelined prepared inserts), the rest loaded directly
    insert = session.prepare("INSERT INTO ks.big (p, c, v) VALUES (?, ?, ?)")
    results = execute_concurrent_with_args(session, insert, rows[:2000], concurrency=100)
    assert all(r.success for r in results)
    emulator.call(bulk_load, emulator.engine, "ks.big", [{"p": p, "c": c, "v": v} for p, c, v in rows[2000:]])
    rs = session.execute(SimpleStatement("SELECT p, c, v FROM ks.big", fetch_size=1000))
    seen = [(r.p, r.c, r.v) for r in rs]
    assert len(seen) == 20000 and sorted(seen) == sorted(rows)
    # one partition paged through a prepared statement, in clustering order
    part = session.prepare("SELECT c FROM ks.big WHERE p = ?")
    part.fetch_size = 100
    cs = [r.c for r in session.execute(part, [5])]
    assert cs == sorted(c for p, c, _ in rows if p == 5)


def test_manual_paging_state_resumes(session: Any) -> None:
    session.execute("CREATE TABLE ks.pg (p int, c int, PRIMARY KEY (p, c))")
    for c in range(25):
        session.execute("INSERT INTO ks.pg (p, c) VALUES (1, %s)", (c,))
    stmt = SimpleStatement("SELECT c FROM ks.pg WHERE p = 1", fetch_size=10)
    first = session.execute(stmt)
    assert [r.c for r in first.current_rows] == list(range(10)) and first.paging_state
    second = session.execute(stmt, paging_state=first.paging_state)
    assert [r.c for r in second.current_rows] == list(range(10, 20))


def test_batches_logged_unlogged_mixed_children_and_client_timestamp(emulator: Any) -> None:
    cluster = Cluster([emulator.host], port=emulator.port, timestamp_generator=lambda: 1_600_000_000_000_001)
    try:
        session = cluster.connect()
        session.execute(KS.format("ks"))
        session.execute("CREATE TABLE ks.b (p int, c int, v text, PRIMARY KEY (p, c))")
        ps = session.prepare("INSERT INTO ks.b (p, c, v) VALUES (?, ?, ?)")
        logged = BatchStatement(consistency_level=ConsistencyLevel.QUORUM)
        logged.add(ps, (1, 1, "a"))
        logged.add(SimpleStatement("INSERT INTO ks.b (p, c, v) VALUES (1, 2, 'b')"))
        logged.add(SimpleStatement("INSERT INTO ks.b (p, c, v) VALUES (%s, %s, %s)"), (2, 1, "c"))
        session.execute(logged)
        unlogged = BatchStatement(batch_type=BatchType.UNLOGGED)
        unlogged.add(SimpleStatement("DELETE FROM ks.b WHERE p = 1 AND c = 2"))
        unlogged.add(ps, (3, 3, "d"))
        session.execute(unlogged)
        rows = session.execute("SELECT p, c, v, WRITETIME(v) AS wt FROM ks.b")
        got = sorted((r.p, r.c, r.v, r.wt) for r in rows)
        ts = 1_600_000_000_000_001
        assert got == [(1, 1, "a", ts), (2, 1, "c", ts), (3, 3, "d", ts)]
    finally:
        cluster.shutdown()


def test_use_keyspace_and_connect_with_keyspace(cluster: Cluster, session: Any) -> None:
    session.execute("CREATE TABLE ks.u (k int PRIMARY KEY, v int)")
    session.execute("USE ks")
    session.execute("INSERT INTO u (k, v) VALUES (1, 2)")
    other = cluster.connect("ks")
    assert other.execute("SELECT v FROM u WHERE k = 1").one().v == 2
    assert session.execute(session.prepare("SELECT v FROM u WHERE k = ?"), [1]).one().v == 2


def test_lwt_applied_column(session: Any) -> None:
    session.execute("CREATE TABLE ks.l (k int PRIMARY KEY, v int)")
    assert session.execute("INSERT INTO ks.l (k, v) VALUES (1, 1) IF NOT EXISTS").was_applied
    res = session.execute("INSERT INTO ks.l (k, v) VALUES (1, 2) IF NOT EXISTS")
    assert not res.was_applied and res.one().v == 1


def test_errors_surface_as_driver_exceptions(session: Any) -> None:
    session.execute("CREATE TABLE ks.e (k int PRIMARY KEY, v int)")
    with pytest.raises(SyntaxException):
        session.execute("SELEC * FROM ks.e")
    with pytest.raises(InvalidRequest, match="nope"):
        session.execute("SELECT * FROM ks.nope")
    with pytest.raises(AlreadyExists) as info:
        session.execute("CREATE TABLE ks.e (k int PRIMARY KEY)")
    assert (info.value.keyspace, info.value.table) == ("ks", "e")
    with pytest.raises(AlreadyExists) as info:
        session.execute(KS.format("ks"))
    assert info.value.keyspace == "ks"
    with pytest.raises(InvalidRequest):
        session.execute("INSERT INTO ks.e (k, v) VALUES (%s, %s)", ("not-an-int", 1))
    with pytest.raises(InvalidRequest):
        session.prepare("SELECT * FROM ks.e WHERE nosuchcol = ?")
    with pytest.raises(InvalidRequest):
        session.execute("USE nosuchks")
    with pytest.raises(InvalidRequest, match="Unsupported by the Scylla emulator: DESCRIBE"):
        session.execute("DESCRIBE KEYSPACE ks")
    assert session.execute("SELECT count(*) FROM ks.e").one()[0] == 0
