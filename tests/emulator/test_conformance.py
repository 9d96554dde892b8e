"""Conformance of the emulator's CDC log through the real driver: the worked examples of
shared/docs/scylla-cdc.md §2.3/§3.2 (and the Scylla approval tests they cite) executed as CQL, the
log read back with ``SELECT *`` and compared column by column; plus streams and generations (§4).

Every statement carries ``USING TIMESTAMP`` (a fresh, increasing µs value) so the ``cdc$time`` of
each group is checked exactly and groups sort in statement order.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session
from cassandra.murmur3 import murmur3
from cassandra.query import dict_factory

from tests.emulator.test_cdc_transform import norm
from tests.scylla_emulator.generations import shard_of, stream_token

META = ("cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch")


def micros(u: uuid.UUID) -> int:
    return (u.time - 0x01B21DD213814000) // 10


class Cql:
    """A driver session on the emulator plus a cursor over new log rows of one table."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.seen: set[tuple[bytes, uuid.UUID, int]] = set()
        self.ts = int(time.time() * 1_000_000)

    def next_ts(self) -> int:
        self.ts = max(self.ts + 10, int(time.time() * 1_000_000))
        return self.ts

    def run(self, stmt: str, *args: Any) -> Any:
        return self.s.execute(stmt, args or None)

    def write(self, stmt: str, table: str = "t") -> list[list[dict[str, Any]]]:
        """Run ``stmt`` (``{ts}`` is replaced by a fresh timestamp) and return the new log groups."""
        ts = self.next_ts()
        self.run(stmt.replace("{ts}", str(ts)))
        return self.new_groups(table, ts)

    def new_groups(self, table: str, ts: int | None = None) -> list[list[dict[str, Any]]]:
        rows = [r for r in self.run(f'SELECT * FROM ks."{table}_scylla_cdc_log"') if self._fresh(r)]
        rows.sort(key=lambda r: (micros(r["cdc$time"]), r["cdc$time"].bytes, r["cdc$batch_seq_no"]))
        groups: list[list[dict[str, Any]]] = []
        for r in rows:
            if not groups or groups[-1][0]["cdc$time"] != r["cdc$time"]:
                groups.append([])
            groups[-1].append(r)
        for g in groups:
            assert [r["cdc$batch_seq_no"] for r in g] == list(range(len(g)))
            assert [r["cdc$end_of_batch"] for r in g] == [None] * (len(g) - 1) + [True]
            assert len({r["cdc$stream_id"] for r in g}) == 1
            if ts is not None:
                assert micros(g[0]["cdc$time"]) in (ts, ts + 1)
        return groups

    def _fresh(self, r: dict[str, Any]) -> bool:
        key = (r["cdc$stream_id"], r["cdc$time"], r["cdc$batch_seq_no"])
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def rows(self, stmt: str, table: str = "t") -> list[dict[str, Any]]:
        """The single new group of ``stmt``, non-null columns only, without the meta columns."""
        groups = self.write(stmt, table)
        assert len(groups) == 1, groups
        return [{k: norm(v) for k, v in r.items() if v is not None and k not in META} for r in groups[0]]


@pytest.fixture
def cql(emulator: Any) -> Iterator[Cql]:
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    session = cluster.connect()
    session.row_factory = dict_factory
    session.execute(
        "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    session.set_keyspace("ks")
    try:
        yield Cql(session)
    finally:
        cluster.shutdown()


def op(n: int, **cols: Any) -> dict[str, Any]:
    return {"cdc$operation": n, **cols}


def create(c: Cql, cols: str, cdc: str = "'enabled': true", name: str = "t") -> None:
    c.run(f"CREATE TABLE {name} ({cols}) WITH cdc = {{{cdc}}}")


# -------------------------------------------------------------------------------------- deltas


def test_updates_inserts_and_column_deletes(cql: Cql) -> None:
    create(cql, "pk int, ck int, v1 int, v2 int, PRIMARY KEY (pk, ck)")
    k = {"pk": 0, "ck": 0}
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET v1 = 0 WHERE pk = 0 AND ck = 0") == [op(1, **k, v1=0)]
    deleted = [op(1, **k, **{"cdc$deleted_v2": True})]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET v2 = null WHERE pk = 0 AND ck = 0") == deleted
    assert cql.rows("DELETE v2 FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck = 0") == deleted
    assert cql.rows("INSERT INTO t (pk, ck, v1) VALUES (0, 0, 0) USING TIMESTAMP {ts}") == [op(2, **k, v1=0)]
    assert cql.rows("INSERT INTO t (pk, ck, v2) VALUES (0, 0, null) USING TIMESTAMP {ts}") == [
        op(2, **k, **{"cdc$deleted_v2": True})
    ]
    assert cql.rows("INSERT INTO t (pk, ck) VALUES (0, 0) USING TIMESTAMP {ts}") == [op(2, **k)]


def test_static_rows(cql: Cql) -> None:
    create(cql, "pk int, ck int, s int static, c int, PRIMARY KEY (pk, ck)")
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET s = 0, c = 0 WHERE pk = 0 AND ck = 0") == [
        op(1, pk=0, s=0),
        op(1, pk=0, ck=0, c=0),
    ]
    assert cql.rows("INSERT INTO t (pk, ck, s, c) VALUES (0, 0, 0, 0) USING TIMESTAMP {ts}") == [
        op(1, pk=0, s=0),
        op(2, pk=0, ck=0, c=0),
    ]


def test_row_partition_and_range_deletes(cql: Cql) -> None:
    create(cql, "pk int, ck int, v int, PRIMARY KEY (pk, ck)")
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck = 0") == [op(3, pk=0, ck=0)]
    cql.write("INSERT INTO t (pk, ck, v) VALUES (0, 0, 0) USING TIMESTAMP {ts}")
    cql.write("INSERT INTO t (pk, ck, v) VALUES (0, 1, 1) USING TIMESTAMP {ts}")
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0") == [op(4, pk=0)]
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck <= 2 AND ck > 0") == [
        op(6, pk=0, ck=0),
        op(7, pk=0, ck=2),
    ]
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck < 3") == [
        op(5, pk=0),
        op(8, pk=0, ck=3),
    ]


def test_multi_column_range_delete(cql: Cql) -> None:
    create(cql, "pk int, ck1 int, ck2 int, ck3 int, v int, PRIMARY KEY (pk, ck1, ck2, ck3)")
    assert cql.rows(
        "DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck1 = 0 AND ck2 > 0 AND ck2 < 3"
    ) == [
        op(6, pk=0, ck1=0, ck2=0),
        op(8, pk=0, ck1=0, ck2=3),
    ]


def test_ttl(cql: Cql) -> None:
    create(cql, "pk int, ck int, a int, b int, PRIMARY KEY (pk, ck)")
    k = {"pk": 0, "ck": 0}
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} AND TTL 5 SET a = 0 WHERE pk = 0 AND ck = 0") == [
        op(1, **k, a=0, **{"cdc$ttl": 5})
    ]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} AND TTL 5 SET a = null WHERE pk = 0 AND ck = 0") == [
        op(1, **k, **{"cdc$deleted_a": True})
    ]
    assert cql.rows(
        "UPDATE t USING TIMESTAMP {ts} AND TTL 5 SET a = 0, b = null WHERE pk = 0 AND ck = 0"
    ) == [
        op(1, **k, **{"cdc$deleted_b": True}),
        op(1, **k, a=0, **{"cdc$ttl": 5}),
    ]


def test_collections_with_ttl(cql: Cql) -> None:
    create(cql, "a int PRIMARY KEY, b map<int, int>")
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} AND TTL 5 SET b = {0: 0} WHERE a = 0") == [
        op(1, a=0, **{"cdc$deleted_b": True}),
        op(1, a=0, b={0: 0}, **{"cdc$ttl": 5}),
    ]
    assert cql.rows("INSERT INTO t (a, b) VALUES (0, {0: 0}) USING TIMESTAMP {ts} AND TTL 5") == [
        op(2, a=0, **{"cdc$ttl": 5}),
        op(1, a=0, **{"cdc$deleted_b": True}),
        op(1, a=0, b={0: 0}, **{"cdc$ttl": 5}),
    ]
    assert cql.rows("INSERT INTO t (a, b) VALUES (0, {0: 0}) USING TIMESTAMP {ts}") == [
        op(2, a=0, b={0: 0}, **{"cdc$deleted_b": True})
    ]


def test_maps_and_sets(cql: Cql) -> None:
    create(cql, "pk int, ck int, v map<int, text>, s set<int>, PRIMARY KEY (pk, ck)")
    k = {"pk": 0, "ck": 0}
    where = "WHERE pk = 0 AND ck = 0"
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = v + {{1: 'v1', 2: 'v2'}} {where}") == [
        op(1, **k, v={1: "v1", 2: "v2"})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = v - {{1, 2, 3}} {where}") == [
        op(1, **k, **{"cdc$deleted_elements_v": {1, 2, 3}})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = null {where}") == [
        op(1, **k, **{"cdc$deleted_v": True})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = {{1: 'v1', 2: 'v2'}} {where}") == [
        op(1, **k, v={1: "v1", 2: "v2"}, **{"cdc$deleted_v": True})
    ]
    assert cql.rows("INSERT INTO t (pk, ck, v) VALUES (0, 0, {1: 'v1', 2: 'v2'}) USING TIMESTAMP {ts}") == [
        op(2, **k, v={1: "v1", 2: "v2"}, **{"cdc$deleted_v": True})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET s = s + {{1, 2}} {where}") == [op(1, **k, s={1, 2})]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET s = s - {{1, 2, 3}} {where}") == [
        op(1, **k, **{"cdc$deleted_elements_s": {1, 2, 3}})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET s = {{1, 2}} {where}") == [
        op(1, **k, s={1, 2}, **{"cdc$deleted_s": True})
    ]


def test_lists(cql: Cql) -> None:
    create(cql, "pk int, ck int, v list<int>, PRIMARY KEY (pk, ck)")
    where = "WHERE pk = 0 AND ck = 0"
    (row,) = cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = v + [1, 2] {where}")
    keys = sorted(row["v"], key=lambda u: (u.time, bytes(b ^ 0x80 for b in u.bytes[8:])))
    assert [row["v"][key] for key in keys] == [1, 2] and all(key.version == 1 for key in keys)
    (row,) = cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = v - [1] {where}")
    assert row == op(1, pk=0, ck=0, **{"cdc$deleted_elements_v": {keys[0]}})
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = [] {where}") == [
        op(1, pk=0, ck=0, **{"cdc$deleted_v": True})
    ]
    (row,) = cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = [7, 8] {where}")
    assert row["cdc$deleted_v"] is True and sorted(row["v"].values()) == [7, 8]


def test_udts(cql: Cql) -> None:
    cql.run("CREATE TYPE ut (a int, b int, c int)")
    create(cql, "pk int, ck int, v ut, PRIMARY KEY (pk, ck)")
    where = "WHERE pk = 0 AND ck = 0"
    k = {"pk": 0, "ck": 0}
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v.a = 0, v.b = 1 {where}") == [
        op(1, **k, v=(0, 1, None))
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v.a = null, v.b = null {where}") == [
        op(1, **k, v=(None, None, None), **{"cdc$deleted_elements_v": {0, 1}})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v.a = 42, v.c = null {where}") == [
        op(1, **k, v=(42, None, None), **{"cdc$deleted_elements_v": {2}})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = null {where}") == [
        op(1, **k, v=(None, None, None), **{"cdc$deleted_v": True})
    ]
    assert cql.rows(f"UPDATE t USING TIMESTAMP {{ts}} SET v = {{a: 1, b: 2}} {where}") == [
        op(1, **k, v=(1, 2, None), **{"cdc$deleted_v": True})
    ]


def test_collection_column_delete_is_logged_at_t_plus_1(cql: Cql) -> None:
    create(cql, "pk int, ck int, v map<int, int>, PRIMARY KEY (pk, ck)")
    ts = cql.next_ts()
    cql.run(f"DELETE v FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck = 0")
    (group,) = cql.new_groups("t")
    assert micros(group[0]["cdc$time"]) == ts + 1 and group[0]["cdc$deleted_v"] is True


def test_batches(cql: Cql) -> None:
    create(cql, "pk int, ck int, a int, PRIMARY KEY (pk, ck)")
    ts = cql.next_ts()
    cql.run(
        f"BEGIN UNLOGGED BATCH USING TIMESTAMP {ts} UPDATE t SET a = 0 WHERE pk = 0 AND ck = 1; "
        "UPDATE t SET a = 0 WHERE pk = 0 AND ck = 0; APPLY BATCH"
    )
    (group,) = cql.new_groups("t", ts)
    assert [(r["ck"], r["cdc$batch_seq_no"]) for r in group] == [(0, 0), (1, 1)]
    t1, t2 = cql.next_ts(), cql.next_ts()
    cql.run(
        f"BEGIN UNLOGGED BATCH UPDATE t USING TIMESTAMP {t1} SET a = 0 WHERE pk = 0 AND ck = 0; "
        f"UPDATE t USING TIMESTAMP {t2} SET a = 0 WHERE pk = 0 AND ck = 1; APPLY BATCH"
    )
    groups = cql.new_groups("t")
    assert [(micros(g[0]["cdc$time"]), len(g)) for g in groups] == [(t1, 1), (t2, 1)]
    ts = cql.next_ts()
    cql.run(
        f"BEGIN UNLOGGED BATCH USING TIMESTAMP {ts} UPDATE t SET a = 1 WHERE pk = 1 AND ck = 0; "
        "UPDATE t SET a = 1 WHERE pk = 2 AND ck = 0; APPLY BATCH"
    )
    groups = cql.new_groups("t", ts)
    assert len(groups) == 2 and groups[0][0]["cdc$time"] != groups[1][0]["cdc$time"]


def test_write_from_the_future_is_rejected(cql: Cql) -> None:
    create(cql, "pk int PRIMARY KEY, v int")
    with pytest.raises(InvalidRequest, match='cdc: attempted to get a stream "from the future"'):
        cql.run(f"INSERT INTO t (pk, v) VALUES (0, 0) USING TIMESTAMP {int(time.time() * 1e6) + 60_000_000}")
    assert cql.new_groups("t") == []


def test_counter_table_is_refused(cql: Cql) -> None:
    with pytest.raises(
        InvalidRequest, match=r"Cannot create CDC log for table ks.c. Counter support not implemented"
    ):
        cql.run("CREATE TABLE c (pk int PRIMARY KEY, n counter) WITH cdc = {'enabled': true}")


# -------------------------------------------------------------------------------------- images


def test_preimage_full_and_postimage(cql: Cql) -> None:
    create(
        cql,
        "pk int, ck int, v1 int, v2 int, PRIMARY KEY (pk, ck)",
        "'enabled': true, 'preimage': 'full', 'postimage': true",
    )
    k0, k1, k2 = ({"pk": 0, "ck": i} for i in range(3))
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET v1 = 0 WHERE pk = 0 AND ck = 0") == [
        op(1, **k0, v1=0),
        op(9, **k0, v1=0),
    ]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET v2 = 0 WHERE pk = 0 AND ck = 1") == [
        op(1, **k1, v2=0),
        op(9, **k1, v2=0),
    ]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET v1 = 0 WHERE pk = 0 AND ck = 2") == [
        op(1, **k2, v1=0),
        op(9, **k2, v1=0),
    ]
    assert cql.rows("INSERT INTO t (pk, ck, v2) VALUES (0, 0, 0) USING TIMESTAMP {ts}") == [
        op(0, **k0, v1=0, **{"cdc$deleted_v2": True}),
        op(2, **k0, v2=0),
        op(9, **k0, v1=0, v2=0),
    ]
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck = 0") == [
        op(0, **k0, v1=0, v2=0),
        op(3, **k0),
    ]
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0 AND ck >= 1 AND ck < 2") == [
        op(5, **k1),
        op(8, **k2),
    ]
    assert cql.rows("DELETE FROM t USING TIMESTAMP {ts} WHERE pk = 0") == [op(4, pk=0)]


def test_map_preimage_postimage(cql: Cql) -> None:
    create(
        cql,
        "pk int, ck int, v map<int, int>, PRIMARY KEY (pk, ck)",
        "'enabled': true, 'preimage': true, 'postimage': true",
    )
    cql.write("UPDATE t USING TIMESTAMP {ts} SET v = {1: 1, 2: 2} WHERE pk = 0 AND ck = 0")
    assert cql.rows(
        "UPDATE t USING TIMESTAMP {ts} SET v = v + {3: 3}, v = v - {2} WHERE pk = 0 AND ck = 0"
    ) == [
        op(0, pk=0, ck=0, v={1: 1, 2: 2}),
        op(1, pk=0, ck=0, v={3: 3}, **{"cdc$deleted_elements_v": {2}}),
        op(9, pk=0, ck=0, v={1: 1, 3: 3}),
    ]


def test_static_and_clustered_rows_with_preimage(cql: Cql) -> None:
    create(
        cql,
        "pk int, ck int, vs int static, vc int, PRIMARY KEY (pk, ck)",
        "'enabled': true, 'preimage': true",
    )
    cql.write("UPDATE t USING TIMESTAMP {ts} SET vs = 0 WHERE pk = 0")
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET vs = 1 WHERE pk = 0") == [
        op(0, pk=0, vs=0),
        op(1, pk=0, vs=1),
    ]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET vs = 2, vc = 2 WHERE pk = 0 AND ck = 0") == [
        op(0, pk=0, vs=1),
        op(1, pk=0, vs=2),
        op(1, pk=0, ck=0, vc=2),
    ]
    assert cql.rows("UPDATE t USING TIMESTAMP {ts} SET vs = 3, vc = 3 WHERE pk = 0 AND ck = 0") == [
        op(0, pk=0, vs=2),
        op(0, pk=0, ck=0, vc=2),
        op(1, pk=0, vs=3),
        op(1, pk=0, ck=0, vc=3),
    ]


@pytest.mark.parametrize(
    ("delete", "expected"),
    [
        (
            "DELETE FROM t WHERE pk = 1 AND ck >= 1 AND ck <= 2",
            [op(2, pk=1, ck=1, v=100), op(5, pk=1, ck=1), op(7, pk=1, ck=2)],
        ),
        ("DELETE FROM t WHERE pk = 1", [op(2, pk=1, ck=1, v=100), op(4, pk=1)]),
        (
            "DELETE FROM t WHERE pk = 1 AND ck >= 2 AND ck <= 3",
            [op(2, pk=1, ck=1, v=100), op(5, pk=1, ck=2), op(7, pk=1, ck=3), op(9, pk=1, ck=1, v=100)],
        ),
    ],
)
def test_batch_delete_postimage(cql: Cql, delete: str, expected: list[dict[str, Any]]) -> None:
    create(
        cql,
        "pk int, ck int, v int, PRIMARY KEY (pk, ck)",
        "'enabled': true, 'preimage': true, 'postimage': true",
    )
    insert = "INSERT INTO t (pk, ck, v) VALUES (1, 1, 100)"
    batch = f"BEGIN BATCH USING TIMESTAMP {{ts}} {insert}; {delete}; APPLY BATCH"
    assert cql.rows(batch) == expected


def test_delta_keys(cql: Cql) -> None:
    create(
        cql,
        "pk int, ck int, i1 int, PRIMARY KEY (pk, ck)",
        "'enabled': true, 'preimage': true, 'postimage': true, 'delta': 'keys'",
    )
    assert cql.rows("INSERT INTO t (pk, ck, i1) VALUES (2, 22, 222) USING TIMESTAMP {ts} AND TTL 2222") == [
        op(2, pk=2, ck=22, **{"cdc$ttl": 2222}),
        op(9, pk=2, ck=22, i1=222),
    ]


def test_lwt_only_applied_writes_are_logged(cql: Cql) -> None:
    create(cql, "pk int, ck int, val int, PRIMARY KEY (pk, ck)", "'enabled': true, 'preimage': true")
    k = {"pk": 1, "ck": 1}
    cql.run("INSERT INTO t (pk, ck, val) VALUES (1, 1, 111) IF NOT EXISTS")
    cql.run("INSERT INTO t (pk, ck, val) VALUES (1, 1, 222) IF NOT EXISTS")
    cql.run("UPDATE t SET val = 333 WHERE pk = 1 AND ck = 1 IF EXISTS")
    cql.run("UPDATE t SET val = 333 WHERE pk = 888 AND ck = 777 IF EXISTS")
    cql.run("DELETE FROM t WHERE pk = 1 AND ck = 1 IF EXISTS")
    cql.run("DELETE FROM t WHERE pk = 1 AND ck = 1 IF EXISTS")
    groups = cql.new_groups("t")
    got = [[{k2: v for k2, v in r.items() if v is not None and k2 not in META} for r in g] for g in groups]
    assert got == [
        [op(2, **k, val=111)],
        [op(0, **k, val=111), op(1, **k, val=333)],
        [op(0, **k, val=333), op(3, **k)],
    ]


# --------------------------------------------------------------------------------- generations


def descriptions(c: Cql) -> dict[int, list[tuple[int, list[bytes]]]]:
    """generation start (ms) -> sorted (range_end, streams), read through the driver."""
    times = [
        r["time"]
        for r in c.run(
            "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'"
        )
    ]
    out = {}
    for t in times:
        rows = c.run(
            "SELECT range_end, streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = %s", t
        )
        ms = round((t - datetime.datetime(1970, 1, 1)).total_seconds() * 1000)
        out[ms] = sorted((r["range_end"], sorted(r["streams"])) for r in rows)
    return out


def expected_stream(c: Cql, ranges: list[tuple[int, list[bytes]]], pk: int) -> bytes:
    token = murmur3(pk.to_bytes(4, "big", signed=True))
    info = c.s.cluster.metadata.all_hosts()[0].sharding_info
    _end, streams = next((r for r in ranges if r[0] >= token), ranges[0])
    shard = info.shard_id_from_token(token)
    (sid,) = [
        s for s in streams if shard_of(stream_token(s), len(streams), info.sharding_ignore_msb) == shard
    ]
    return sid


def test_stream_of_each_partition_matches_its_token(cql: Cql) -> None:
    create(cql, "pk int PRIMARY KEY, v int")
    ((_start, ranges),) = descriptions(cql).items()
    for pk in range(30):
        (group,) = cql.write(f"INSERT INTO t (pk, v) VALUES ({pk}, 1) USING TIMESTAMP {{ts}}")
        assert group[0]["cdc$stream_id"] == expected_stream(cql, ranges, pk)


def test_new_generation_moves_writes_at_its_start(cql: Cql) -> None:
    create(cql, "pk int PRIMARY KEY, v int")
    before = descriptions(cql)
    cql.run("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '2000')")
    after = descriptions(cql)
    (new_start,) = set(after) - set(before)
    (old_start,) = before
    assert old_start < new_start and len(after[new_start]) == len(before[old_start])
    old_ts, new_ts = new_start * 1000 - 1, new_start * 1000
    cql.run(f"INSERT INTO t (pk, v) VALUES (7, 1) USING TIMESTAMP {old_ts}")
    cql.run(f"INSERT INTO t (pk, v) VALUES (7, 2) USING TIMESTAMP {new_ts}")
    g_old, g_new = cql.new_groups("t")
    assert micros(g_old[0]["cdc$time"]) == old_ts and micros(g_new[0]["cdc$time"]) == new_ts
    assert g_old[0]["cdc$stream_id"] == expected_stream(cql, after[old_start], 7)
    assert g_new[0]["cdc$stream_id"] == expected_stream(cql, after[new_start], 7)
    assert g_old[0]["cdc$stream_id"] != g_new[0]["cdc$stream_id"]


def test_new_generation_with_other_vnode_count(cql: Cql) -> None:
    cql.run("INSERT INTO emulator.control (command, value) VALUES ('new_generation:3', '1000')")
    sizes = sorted(len(r) for r in descriptions(cql).values())
    assert 3 in sizes and len(sizes) == 2


def test_late_write_lands_at_its_own_time(cql: Cql) -> None:
    create(cql, "pk int PRIMARY KEY, v int")
    (start,) = descriptions(cql)
    now = cql.next_ts()
    late = max(start * 1000, now - 800_000)
    cql.run(f"INSERT INTO t (pk, v) VALUES (1, 1) USING TIMESTAMP {now}")
    cql.run(f"INSERT INTO t (pk, v) VALUES (1, 2) USING TIMESTAMP {late}")
    rows = list(cql.run('SELECT "cdc$time", v FROM t_scylla_cdc_log'))  # one stream: clustering order
    assert [(micros(r["cdc$time"]), r["v"]) for r in rows] == [(late, 2), (now, 1)]
