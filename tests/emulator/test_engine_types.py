"""Every CQL type: literal -> storage -> SELECT value, and bound (serialized) values."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from cassandra.util import Date, Duration, SortedSet, Time

from tests.scylla_emulator.api import CqlError

from .test_engine_helpers import new_engine, rows, run

U1 = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
U4 = uuid.UUID("2f1e9b2c-6a3d-4c1f-9e2a-1b2c3d4e5f60")
CASES: list[tuple[str, str, Any]] = [
    ("ascii", "'abc'", "abc"),
    ("text", "'zażółć'", "zażółć"),
    ("varchar", "'it''s'", "it's"),
    ("tinyint", "-128", -128),
    ("smallint", "32767", 32767),
    ("int", "-2147483648", -2147483648),
    ("bigint", "9223372036854775807", 9223372036854775807),
    ("varint", "123456789012345678901234567890", 123456789012345678901234567890),
    ("decimal", "-1.50", Decimal("-1.50")),
    ("float", "1.5", 1.5),
    ("double", "-2.25e3", -2250.0),
    ("boolean", "true", True),
    ("blob", "0xcafe", b"\xca\xfe"),
    ("uuid", str(U4), U4),
    ("timeuuid", str(U1), U1),
    ("timestamp", "'2024-03-25 16:05:29.484+0000'", dt.datetime(2024, 3, 25, 16, 5, 29, 484000)),
    ("timestamp", "1700000000000", dt.datetime(2023, 11, 14, 22, 13, 20)),
    ("date", "'2024-02-29'", Date("2024-02-29")),
    ("time", "'13:30:54.234'", Time("13:30:54.234")),
    ("duration", "1h30m", Duration(0, 0, 90 * 60 * 10**9)),
    ("duration", "P1Y2M3D", Duration(14, 3, 0)),
    ("inet", "'192.168.0.1'", "192.168.0.1"),
    ("inet", "'::1'", "::1"),
    ("frozen<list<int>>", "[3, 1, 2]", [3, 1, 2]),
    ("frozen<set<text>>", "{'b', 'a'}", SortedSet(["a", "b"])),
    ("frozen<map<int, text>>", "{2: 'b', 1: 'a'}", {1: "a", 2: "b"}),
    ("tuple<int, text>", "(1, 'x')", (1, "x")),
    ("frozen<tuple<int, frozen<list<int>>>>", "(1, [2])", (1, [2])),
    ("list<int>", "[3, 1, 2]", [3, 1, 2]),
    ("set<int>", "{3, 1}", SortedSet([1, 3])),
    ("map<text, int>", "{'b': 2, 'a': 1}", {"a": 1, "b": 2}),
    ("vector<float, 3>", "[1.0, 2.0, 3.5]", [1.0, 2.0, 3.5]),
]


@pytest.mark.parametrize(("cql_type", "literal", "expected"), CASES)
def test_literal_round_trip(cql_type: str, literal: str, expected: Any) -> None:
    e = new_engine()
    run(e, f"CREATE TABLE t (pk int PRIMARY KEY, v {cql_type})")
    run(e, f"INSERT INTO t (pk, v) VALUES (1, {literal})")
    got = rows(e, "SELECT v FROM t WHERE pk = 1")[0]["v"]
    assert got == expected
    # the SELECT column type serializes the value (what the protocol does)
    r = e.execute_decoded("SELECT v FROM t WHERE pk = 1", keyspace="ks")
    spec = r.columns[0].cass_type  # type: ignore[union-attr]
    assert spec.deserialize(spec.serialize(got, 4), 4) == expected


def test_udt_literals_frozen_and_not() -> None:
    e = new_engine()
    run(e, "CREATE TYPE ut (a int, b text)")
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, f frozen<ut>, n ut, l list<frozen<ut>>)")
    run(e, "INSERT INTO t (pk, f, n, l) VALUES (1, {a: 1}, {b: 'x'}, [{a: 2, b: 'y'}])")
    r = rows(e, "SELECT f, n, l FROM t")[0]
    assert tuple(r["f"]) == (1, None)
    assert tuple(r["n"]) == (None, "x")
    assert [tuple(x) for x in r["l"]] == [(2, "y")]
    with pytest.raises(CqlError, match="Unknown field 'zz'"):
        run(e, "INSERT INTO t (pk, f) VALUES (2, {zz: 1})")


def test_bound_serialized_values_are_decoded_by_column_type() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck timeuuid, v map<int, text>, PRIMARY KEY (pk, ck))")
    info = e.prepare("INSERT INTO t (pk, ck, v) VALUES (?, ?, ?)", keyspace="ks")
    assert [c.name for c in info.bind_columns] == ["pk", "ck", "v"]
    assert info.pk_indexes == [0]
    vals = [c.cass_type.serialize(v, 4) for c, v in zip(info.bind_columns, [7, U1, {1: "a"}], strict=True)]
    e.execute_prepared(info.id, vals, keyspace="ks")
    assert rows(e, "SELECT * FROM t") == [{"pk": 7, "ck": U1, "v": {1: "a"}}]


@pytest.mark.parametrize(
    ("cql_type", "literal"),
    [
        ("int", "'x'"),
        ("int", "2147483648"),
        ("text", "1"),
        ("timeuuid", str(U4)),
        ("blob", "'ab'"),
        ("boolean", "1"),
        ("timestamp", "'yesterday-ish'"),
    ],
)
def test_bad_literals_are_rejected(cql_type: str, literal: str) -> None:
    e = new_engine()
    run(e, f"CREATE TABLE t (pk int PRIMARY KEY, v {cql_type})")
    with pytest.raises(CqlError):
        run(e, f"INSERT INTO t (pk, v) VALUES (1, {literal})")


def test_clustering_order_is_type_aware() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int, ck timeuuid, PRIMARY KEY (pk, ck))")
    # same timestamp, low bytes compared as signed bytes: 0x80.. < 0x00.. < 0x7f..
    a = uuid.UUID("1419d680-1dd2-11b2-8080-808080808080")
    b = uuid.UUID("1419d680-1dd2-11b2-0000-000000000000")
    c = uuid.UUID("1419d680-1dd2-11b2-7f7f-7f7f7f7f7f7f")
    d = uuid.UUID("00000000-1dd3-11b2-8080-808080808080")  # later time_mid: later timestamp
    for u in (d, c, b, a):
        run(e, "INSERT INTO t (pk, ck) VALUES (1, ?)", u)
    assert [r["ck"] for r in rows(e, "SELECT ck FROM t WHERE pk = 1")] == [a, b, c, d]
    run(
        e,
        "CREATE TABLE s (pk int, ck text, n varint, PRIMARY KEY (pk, ck, n)) "
        "WITH CLUSTERING ORDER BY (ck DESC, n ASC)",
    )
    for ck, n in (("a", 2), ("b", -5), ("a", -1), ("ä", 0)):
        run(e, "INSERT INTO s (pk, ck, n) VALUES (1, ?, ?)", ck, n)
    assert [(r["ck"], r["n"]) for r in rows(e, "SELECT ck, n FROM s WHERE pk = 1")] == [
        ("ä", 0),
        ("b", -5),
        ("a", -1),
        ("a", 2),
    ]
