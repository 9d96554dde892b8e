"""Driver values -> canonical value forms (cdcd/events.py docstring)."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections import namedtuple
from typing import Any

import msgspec
import pytest
from cassandra.cqltypes import Int32Type
from cassandra.util import Date, Duration, OrderedMapSerializedKey, SortedSet, Time

from cdcd.events import CqlDuration
from cdcd.schema import CqlType, UdtDef, parse_cql_type
from cdcd.scylla.values import canonical, deleted_elements, delta_value


def c(text: str, v: Any) -> Any:
    return canonical(parse_cql_type(text))(v)


def test_atomic_types() -> None:
    ts = datetime.datetime(2024, 5, 1, 12, 30, 1, 123000)
    out = c("timestamp", ts)
    assert out == ts.replace(tzinfo=datetime.UTC) and out.tzinfo is datetime.UTC
    assert c("date", Date(19000)) == datetime.date(2022, 1, 8)
    assert c("date", Date(-1)) == datetime.date(1969, 12, 31)
    assert c("time", Time(3_723_000_000_001)) == 3_723_000_000_001
    assert c("duration", Duration(1, 2, 3)) == CqlDuration(1, 2, 3)
    assert c("inet", "10.0.0.1") == "10.0.0.1"
    assert c("decimal", decimal.Decimal("1.50")) == decimal.Decimal("1.50")
    assert c("varint", 10**30) == 10**30
    assert c("blob", b"\x00\x01") == b"\x00\x01"
    u = uuid.uuid1()
    assert c("timeuuid", u) == u
    for t in ("int", "text", "timestamp", "date", "list<int>", "map<int, int>", "tuple<int, text>"):
        assert c(t, None) is None


def test_date_outside_python_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="outside years"):
        c("date", Date(2**31 - 1))


def test_collections_and_tuples() -> None:
    assert c("frozen<list<int>>", [3, 1]) == [3, 1]
    assert c("frozen<set<int>>", SortedSet([3, 1])) == [1, 3]
    m = OrderedMapSerializedKey(Int32Type, 4)
    m._insert_unchecked(1, b"\x00\x00\x00\x01", "a")
    assert c("frozen<map<int, text>>", m) == {1: "a"}
    # keys made hashable
    assert c("frozen<map<frozen<list<int>>, int>>", {(1, 2): 5}) == {(1, 2): 5}
    assert c("frozen<set<frozen<list<int>>>>", [[1], [2]]) == [[1], [2]]
    assert c("tuple<int, date>", (1, Date(0))) == (1, datetime.date(1970, 1, 1))
    assert c("frozen<list<timestamp>>", [datetime.datetime(2020, 1, 1)]) == [
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ]


def test_canonical_values_encode_with_msgspec() -> None:
    v = c("tuple<int, duration, frozen<map<text, frozen<list<int>>>>>", (1, Duration(1, 0, 5), {"a": [1]}))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(v)) == [1, [1, 0, 5], {"a": [1]}]


def test_udt_namedtuple_and_plain_tuple() -> None:
    udt = UdtDef("ks", "ut", ("a", "b"), (CqlType("int"), CqlType("date")))
    t = CqlType("udt", frozen=True, udt=udt)
    nt = namedtuple("ut", ["a", "b"])
    assert canonical(t)(nt(1, Date(0))) == {"a": 1, "b": datetime.date(1970, 1, 1)}
    assert canonical(t)((1,)) == {"a": 1, "b": None}  # fields added later are null
    with pytest.raises(ValueError, match="more fields"):
        canonical(t)((1, 2, 3))


def test_image_list_is_logged_as_timeuuid_map() -> None:
    k1 = uuid.UUID("db3214f0-2fea-11eb-af55-000000000001")
    k2 = uuid.UUID("db3214f1-2fea-11eb-af55-000000000001")
    # Same timestamp, signed-byte order of the low bits: 0x80.. sorts before 0x7f...
    lo = uuid.UUID("db3214f2-2fea-11eb-8000-000000000000")
    hi = uuid.UUID("db3214f2-2fea-11eb-7f00-000000000000")
    lst = parse_cql_type("list<int>")
    assert canonical(lst)({k2: 2, k1: 1, hi: 4, lo: 3}) == [1, 2, 3, 4]
    assert delta_value(lst)({hi: 4, lo: 3}) == {lo: 3, hi: 4}
    assert list(delta_value(lst)({hi: 4, lo: 3})) == [lo, hi]
    assert deleted_elements(lst)([hi, lo]) == [lo, hi]


def test_delta_forms_of_multicell_columns() -> None:
    assert delta_value(parse_cql_type("set<int>"))(SortedSet([2, 1])) == [1, 2]
    assert delta_value(parse_cql_type("map<int, text>"))({}) is None
    assert delta_value(parse_cql_type("frozen<set<int>>"))(SortedSet()) == []  # frozen: a real empty value
    assert deleted_elements(parse_cql_type("map<text, int>"))(SortedSet(["b", "a"])) == ["a", "b"]
    with pytest.raises(ValueError, match="no deleted elements"):
        deleted_elements(parse_cql_type("int"))
