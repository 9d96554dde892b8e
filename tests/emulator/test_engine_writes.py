"""Write semantics: last-write-wins, tombstones, TTL, collections, UDT fields, statics, batches, LWT."""

from __future__ import annotations

import pytest
from cassandra.util import SortedSet

from tests.scylla_emulator.api import CqlError

from .test_engine_helpers import new_engine, rows, run


def test_last_write_wins_and_tombstone_wins_ties() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int)")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 2) USING TIMESTAMP 200")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 1) USING TIMESTAMP 100")
    assert rows(e, "SELECT v, writetime(v) FROM t") == [{"v": 2, "writetime(v)": 200}]
    run(e, "DELETE v FROM t USING TIMESTAMP 200 WHERE pk = 1")
    assert rows(e, "SELECT v FROM t") == [{"v": None}]  # row marker of the INSERT keeps the row
    run(e, "DELETE FROM t USING TIMESTAMP 199 WHERE pk = 1")
    assert rows(e, "SELECT pk FROM t") == [{"pk": 1}]  # marker written at 200 survives
    run(e, "DELETE FROM t USING TIMESTAMP 200 WHERE pk = 1")
    assert rows(e, "SELECT pk FROM t") == []
    run(e, "UPDATE t USING TIMESTAMP 150 SET v = 5 WHERE pk = 1")
    assert rows(e, "SELECT pk FROM t") == []  # shadowed by the partition tombstone at 200


def test_frame_timestamp_is_used_when_no_using_timestamp() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int)")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 1)", timestamp=1234)
    assert rows(e, "SELECT writetime(v) FROM t") == [{"writetime(v)": 1234}]


def test_ttl_expiry_follows_the_clock() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int, w int) WITH default_time_to_live = 100")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 1) USING TTL 10")
    run(e, "UPDATE t SET w = 2 WHERE pk = 1")  # default ttl 100
    run(e, "INSERT INTO t (pk, v) VALUES (2, 2) USING TTL 0")  # no ttl despite the default
    assert rows(e, "SELECT pk, ttl(v), ttl(w) FROM t WHERE pk = 1") == [
        {"pk": 1, "ttl(v)": 10, "ttl(w)": 100}
    ]
    e.advance_clock(11)
    assert rows(e, "SELECT pk, v, w FROM t WHERE pk = 1") == [{"pk": 1, "v": None, "w": 2}]
    e.advance_clock(100)
    assert rows(e, "SELECT pk, v FROM t") == [{"pk": 2, "v": 2}]


def test_list_operations() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, l list<int>)")
    run(e, "INSERT INTO t (pk, l) VALUES (1, [1, 2])")
    run(e, "UPDATE t SET l = l + [3, 4] WHERE pk = 1")
    run(e, "UPDATE t SET l = [0] + l WHERE pk = 1")
    run(e, "UPDATE t SET l = [-2, -1] + l WHERE pk = 1")
    assert rows(e, "SELECT l FROM t")[0]["l"] == [-2, -1, 0, 1, 2, 3, 4]
    run(e, "UPDATE t SET l[2] = 100 WHERE pk = 1")
    run(e, "DELETE l[0] FROM t WHERE pk = 1")
    run(e, "UPDATE t SET l = l - [4, 2] WHERE pk = 1")
    assert rows(e, "SELECT l FROM t")[0]["l"] == [-1, 100, 1, 3]
    with pytest.raises(CqlError, match="List index 9 out of bound, list has size 4"):
        run(e, "UPDATE t SET l[9] = 1 WHERE pk = 1")
    run(e, "UPDATE t SET l = [] WHERE pk = 1")
    assert rows(e, "SELECT l FROM t")[0]["l"] is None


def test_set_and_map_operations() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, s set<text>, m map<int, text>)")
    run(e, "INSERT INTO t (pk, s, m) VALUES (1, {'a', 'b'}, {1: 'x', 2: 'y'})")
    run(e, "UPDATE t SET s = s + {'c'}, s = s - {'a'}, m = m + {3: 'z'}, m[1] = 'X' WHERE pk = 1")
    run(e, "UPDATE t SET m = m - {2} WHERE pk = 1")
    run(e, "DELETE m[3] FROM t WHERE pk = 1")
    assert rows(e, "SELECT s, m FROM t") == [{"s": SortedSet(["b", "c"]), "m": {1: "X"}}]
    run(e, "UPDATE t SET m = {5: 'five'} WHERE pk = 1")  # overwrite
    run(e, "DELETE s FROM t WHERE pk = 1")
    assert rows(e, "SELECT s, m FROM t") == [{"s": None, "m": {5: "five"}}]


def test_collection_overwrite_tombstone_is_t_minus_1() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, s set<int>)")
    run(e, "UPDATE t USING TIMESTAMP 99 SET s = s + {1} WHERE pk = 1")
    run(e, "UPDATE t USING TIMESTAMP 100 SET s = {2} WHERE pk = 1")  # tombstone at 99 removes {1}
    run(e, "UPDATE t USING TIMESTAMP 99 SET s = s + {3} WHERE pk = 1")  # still shadowed
    run(e, "UPDATE t USING TIMESTAMP 100 SET s = s + {4} WHERE pk = 1")
    assert rows(e, "SELECT s FROM t")[0]["s"] == SortedSet([2, 4])
    run(e, "DELETE s FROM t USING TIMESTAMP 100 WHERE pk = 1")  # DELETE c uses T itself
    assert rows(e, "SELECT s FROM t") == []


def test_udt_field_updates_and_deletes() -> None:
    e = new_engine()
    run(e, "CREATE TYPE ut (a int, b text, c int)")
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, u ut, f frozen<ut>)")
    run(e, "UPDATE t SET u.a = 1, u.b = 'x' WHERE pk = 1")
    run(e, "DELETE u.b FROM t WHERE pk = 1")
    assert tuple(rows(e, "SELECT u FROM t")[0]["u"]) == (1, None, None)
    with pytest.raises(CqlError, match="frozen UDT column f"):
        run(e, "UPDATE t SET f.a = 1 WHERE pk = 1")


def test_static_columns_and_static_only_partitions() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck int, s int static, v int, PRIMARY KEY (pk, ck))")
    run(e, "INSERT INTO t (pk, s) VALUES (1, 10)")
    assert rows(e, "SELECT * FROM t WHERE pk = 1") == [{"pk": 1, "ck": None, "s": 10, "v": None}]
    run(e, "INSERT INTO t (pk, ck, v) VALUES (1, 1, 1)")
    run(e, "INSERT INTO t (pk, ck, v) VALUES (1, 2, 2)")
    run(e, "UPDATE t SET s = 11 WHERE pk = 1")
    assert rows(e, "SELECT ck, s, v FROM t WHERE pk = 1") == [
        {"ck": 1, "s": 11, "v": 1},
        {"ck": 2, "s": 11, "v": 2},
    ]
    with pytest.raises(CqlError, match="Some clustering keys are missing: ck"):
        run(e, "UPDATE t SET v = 1 WHERE pk = 1")


def test_range_and_partition_deletes() -> None:
    e = new_engine()
    run(
        e,
        "CREATE TABLE t (pk int, c1 int, c2 int, v int, PRIMARY KEY (pk, c1, c2)) "
        "WITH CLUSTERING ORDER BY (c1 ASC, c2 DESC)",
    )
    for c1 in range(3):
        for c2 in range(4):
            run(e, "INSERT INTO t (pk, c1, c2, v) VALUES (1, ?, ?, 0)", c1, c2)
    run(e, "DELETE FROM t WHERE pk = 1 AND c1 = 1 AND c2 > 0 AND c2 <= 2")
    run(e, "DELETE FROM t WHERE pk = 1 AND c1 >= 2")
    got = [(r["c1"], r["c2"]) for r in rows(e, "SELECT c1, c2 FROM t WHERE pk = 1")]
    assert got == [(0, 3), (0, 2), (0, 1), (0, 0), (1, 3), (1, 0)]
    run(e, "INSERT INTO t (pk, c1, c2, v) VALUES (1, 2, 9, 9)")  # newer than the range tombstone
    assert rows(e, "SELECT c1, c2 FROM t WHERE pk = 1 AND c1 = 2") == [{"c1": 2, "c2": 9}]
    with pytest.raises(CqlError, match="Range deletions are not supported for specific columns"):
        run(e, "DELETE v FROM t WHERE pk = 1 AND c1 > 0")
    run(e, "DELETE FROM t WHERE pk = 1")
    assert rows(e, "SELECT * FROM t") == []


def test_batches_timestamps_and_empty_batch() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck int, v int, PRIMARY KEY (pk, ck))")
    run(e, "BEGIN BATCH APPLY BATCH")
    run(
        e,
        "BEGIN UNLOGGED BATCH USING TIMESTAMP 500 INSERT INTO t (pk, ck, v) VALUES (1, 1, 1); "
        "UPDATE t SET v = 2 WHERE pk = 1 AND ck = 2; DELETE FROM t WHERE pk = 2 AND ck = 1; APPLY BATCH",
    )
    assert rows(e, "SELECT ck, v, writetime(v) FROM t WHERE pk = 1") == [
        {"ck": 1, "v": 1, "writetime(v)": 500},
        {"ck": 2, "v": 2, "writetime(v)": 500},
    ]
    with pytest.raises(CqlError, match="Timestamp must be set either on BATCH or individual statements"):
        run(
            e,
            "BEGIN BATCH USING TIMESTAMP 1 INSERT INTO t (pk, ck) VALUES (1, 1) USING TIMESTAMP 2; "
            "APPLY BATCH",
        )


def test_lwt_results_like_scylla() -> None:
    """Scylla (cas_request.cc::build_cas_result_set, test/cql/cdc_with_lwt_test.result): applied or
    not, ``[applied]`` plus every column for IF [NOT] EXISTS (the condition columns otherwise),
    with the row as it was before the write (all null when there was none)."""
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck int, v int, PRIMARY KEY (pk, ck))")
    none = {"pk": None, "ck": None, "v": None}
    assert rows(e, "INSERT INTO t (pk, ck, v) VALUES (1, 1, 111) IF NOT EXISTS") == [
        {"[applied]": True, **none}
    ]
    assert rows(e, "INSERT INTO t (pk, ck, v) VALUES (1, 1, 222) IF NOT EXISTS") == [
        {"[applied]": False, "pk": 1, "ck": 1, "v": 111}
    ]
    assert rows(e, "UPDATE t SET v = 333 WHERE pk = 1 AND ck = 1 IF EXISTS") == [
        {"[applied]": True, "pk": 1, "ck": 1, "v": 111}
    ]
    assert rows(e, "UPDATE t SET v = 333 WHERE pk = 8 AND ck = 8 IF EXISTS") == [{"[applied]": False, **none}]
    assert rows(e, "UPDATE t SET v = 444 WHERE pk = 1 AND ck = 1 IF v = 1") == [
        {"[applied]": False, "v": 333}
    ]
    assert rows(e, "UPDATE t SET v = 444 WHERE pk = 1 AND ck = 1 IF v IN (1, 333)") == [
        {"[applied]": True, "v": 333}
    ]
    assert rows(e, "DELETE FROM t WHERE pk = 1 AND ck = 1 IF v > 400") == [{"[applied]": True, "v": 444}]
    assert rows(e, "DELETE FROM t WHERE pk = 1 AND ck = 1 IF EXISTS") == [{"[applied]": False, **none}]
    assert rows(e, "SELECT * FROM t") == []
    # static columns come before regular ones (schema::all_columns), each by name
    run(e, "CREATE TABLE s (pk int, ck int, b int, a int static, PRIMARY KEY (pk, ck))")
    assert list(rows(e, "INSERT INTO s (pk, ck, b) VALUES (1, 1, 1) IF NOT EXISTS")[0]) == [
        "[applied]",
        "pk",
        "ck",
        "a",
        "b",
    ]
    with pytest.raises(CqlError, match="Cannot provide custom timestamp for conditional updates"):
        run(e, "INSERT INTO t (pk, ck) VALUES (1, 1) IF NOT EXISTS USING TIMESTAMP 5")


def test_counters() -> None:
    e = new_engine()
    run(e, "CREATE TABLE c (pk int PRIMARY KEY, n counter)")
    run(e, "UPDATE c SET n = n + 5 WHERE pk = 1")
    run(e, "UPDATE c SET n = n - 2 WHERE pk = 1")
    assert rows(e, "SELECT n FROM c") == [{"n": 3}]
    with pytest.raises(CqlError, match="INSERT statements are not allowed on counter tables"):
        run(e, "INSERT INTO c (pk, n) VALUES (2, 1)")


def test_write_errors() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck int, v int, PRIMARY KEY (pk, ck))")
    for stmt, msg in [
        ("INSERT INTO t (ck, v) VALUES (1, 1)", "Some partition key parts are missing: pk"),
        ("INSERT INTO t (pk, v) VALUES (1, 1)", "Some clustering keys are missing: ck"),
        ("UPDATE t SET pk = 1 WHERE pk = 1 AND ck = 1", "PRIMARY KEY part pk found in SET part"),
        ("UPDATE t SET nope = 1 WHERE pk = 1 AND ck = 1", "Undefined column name nope"),
        ("INSERT INTO t (pk, ck) VALUES (null, 1)", "Invalid null value"),
        ("INSERT INTO t (pk, ck) VALUES (1, 1) USING TTL -1", "A TTL must be greater or equal to 0"),
        ("INSERT INTO nope (pk) VALUES (1)", "unconfigured table nope"),
    ]:
        with pytest.raises(CqlError, match=msg):
            run(e, stmt)
