"""clickhouse/types.py: the CQL -> ClickHouse type map, value conversion (with its errors), read-back
normalisation and CQL order. Pure: no server."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcd.events import CqlDuration
from cdcd.schema import UdtDef, parse_cql_type
from cdcd.sinks.clickhouse.types import (
    ch_type,
    column_type,
    from_read,
    holds_blob,
    identity,
    order_key,
    quote_ident,
    to_ch,
)

UT = UdtDef("ks", "ut", ("a", "b"), (parse_cql_type("int"), parse_cql_type("text")))


def t(text: str) -> Any:
    return parse_cql_type(text, lambda name: UT)


@pytest.mark.parametrize(
    ("cql", "ch"),
    [
        ("text", "String"), ("ascii", "String"), ("tinyint", "Int8"), ("smallint", "Int16"), ("int", "Int32"),
        ("bigint", "Int64"), ("varint", "Int256"), ("decimal", "String"), ("float", "Float32"),
        ("double", "Float64"), ("boolean", "Bool"), ("uuid", "UUID"), ("timeuuid", "UUID"),
        ("timestamp", "DateTime64(3, 'UTC')"), ("date", "Date32"), ("time", "Int64"),
        ("duration", "Tuple(months Int32, days Int32, nanoseconds Int64)"), ("inet", "IPv6"), ("blob", "String"),
        ("list<int>", "Array(Int32)"), ("frozen<set<text>>", "Array(String)"), ("map<int, text>", "Map(Int32, String)"),
        ("map<frozen<list<int>>, blob>", "Array(Tuple(key Array(Int32), value String))"),
        ("tuple<int, text>", "Tuple(Nullable(Int32), Nullable(String))"),
        ("ut", "Tuple(`a` Nullable(Int32), `b` Nullable(String))"),
        ("frozen<list<frozen<map<text, int>>>>", "Array(Map(String, Int32))"),
        ("tuple<int, frozen<list<int>>>", "Tuple(Nullable(Int32), Array(Int32))"),
    ],
)  # fmt: skip
def test_type_map(cql: str, ch: str) -> None:
    assert ch_type(t(cql)) == ch


def test_value_columns_are_nullable_except_collections_and_keys() -> None:
    assert column_type(t("int"), key=False) == "Nullable(Int32)"
    assert column_type(t("int"), key=True) == "Int32"
    assert column_type(t("list<int>"), key=False) == "Array(Int32)"
    assert column_type(t("duration"), key=False).startswith("Nullable(Tuple(")


@pytest.mark.parametrize(
    ("cql", "value", "expect"),
    [
        ("varint", 2**255 - 1, 2**255 - 1),
        ("decimal", decimal.Decimal("1.10"), "1.10"),
        ("decimal", decimal.Decimal("-1E+400"), "-1E+400"),
        ("timestamp", dt.datetime(2024, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))),
         dt.datetime(2024, 1, 1, 0, tzinfo=dt.UTC)),
        ("inet", "10.1.2.3", ipaddress.IPv6Address("::ffff:10.1.2.3")),
        ("inet", "::1", ipaddress.IPv6Address("::1")),
        ("duration", CqlDuration(1, -2, 3), (1, -2, 3)),
        ("frozen<list<text>>", ["a", "b"], ["a", "b"]),
        ("frozen<list<int>>", (1, 2), [1, 2]),
        ("frozen<map<int, text>>", {1: "x"}, {1: "x"}),
        ("map<frozen<list<int>>, int>", {(1, 2): 3}, [([1, 2], 3)]),
        ("ut", {"b": "x"}, (None, "x")),
        ("tuple<int, text>", (None, "t"), (None, "t")),
        ("list<int>", None, []),
        ("text", None, None),
    ],
)  # fmt: skip
def test_conversion(cql: str, value: Any, expect: Any) -> None:
    assert to_ch(t(cql))(value) == expect


@pytest.mark.parametrize(
    ("cql", "value", "message"),
    [
        ("tinyint", 128, "outside ClickHouse Int8"),
        ("varint", 2**255, "outside ClickHouse Int256"),
        ("int", True, "expected int"),
        ("int", "1", "expected int"),
        ("float", 1e300, "Float32"),
        ("decimal", decimal.Decimal("NaN"), "finite"),
        ("time", 86_400_000_000_000, "outside one day"),
        ("duration", CqlDuration(2**31, 0, 0), "out of range"),
        ("inet", "not an address", "does not appear to be an IPv4 or IPv6 address"),
        ("frozen<list<int>>", [1, None], "null is not allowed"),
        ("frozen<list<smallint>>", [1, 2**20], "outside ClickHouse Int16"),
        ("ut", {"zz": 1}, "has no field"),
        ("text", b"bytes", "expected str"),
        ("date", dt.datetime(2024, 1, 1), "expected date"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_with_a_reason(cql: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_ch(t(cql))(value)


def test_key_columns_refuse_null() -> None:
    with pytest.raises(ValueError, match="null is not allowed in a key column"):
        to_ch(t("int"), nullable=False)(None)


def test_read_back_normalisation() -> None:
    assert from_read(t("text"), strings_as_bytes=False) is identity
    assert from_read(t("text"))(b"z\xc3\xb3") == "zó"
    assert from_read(t("inet"))(ipaddress.IPv4Address("10.0.0.1")) == ipaddress.IPv6Address("::ffff:10.0.0.1")
    assert from_read(t("timestamp"))(dt.datetime(2024, 1, 1)) == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert from_read(t("duration"))({"months": 1, "days": 2, "nanoseconds": 3}) == (1, 2, 3)
    assert from_read(t("ut"))({"a": 1, "b": b"x"}) == (1, "x")
    assert from_read(t("list<int>"))(None) == []
    assert from_read(t("map<frozen<list<int>>, blob>"), True)([([1], b"\x00")]) == [([1], b"\x00")]
    assert holds_blob(t("tuple<int, blob>")) and not holds_blob(t("map<int, text>"))


def test_cql_order_of_timeuuids_and_inet() -> None:
    older = uuid.UUID("00000000-0000-1000-8000-000000000000")
    newer = uuid.UUID("00000001-0000-1000-7f00-000000000000")  # later time, "smaller" low bytes
    key = order_key(t("timeuuid"))
    assert key(older) < key(newer)
    inet = order_key(t("inet"))
    v4 = to_ch(t("inet"))("10.0.0.1")
    v6 = to_ch(t("inet"))("::1")
    assert inet(v6) < inet(v4)  # CQL compares the address bytes: 00..01 (16 bytes) < 0a000001 (4 bytes)
    dec = order_key(t("decimal"))
    assert dec("10") > dec("9.5")  # numerically, not as text


@given(st.lists(st.text(), max_size=5))
def test_text_sequences_convert_to_equal_lists(values: list[str]) -> None:
    assert to_ch(t("frozen<list<text>>"))(values) == values


@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=5))
def test_int_sequences_are_range_checked(values: list[int]) -> None:
    conv = to_ch(t("frozen<list<int>>"))
    if all(-(2**31) <= v < 2**31 for v in values):
        assert conv(values) == values
    else:
        with pytest.raises(ValueError, match="Int32"):
            conv(values)


@pytest.mark.parametrize("name", ["t", "with space", "x`y", "back\\slash", "zażółć"])
def test_identifiers_are_backquoted(name: str) -> None:
    q = quote_ident(name)
    assert q.startswith("`") and q.endswith("`")
    assert q[1:-1].replace("\\\\", "").replace("\\`", "").count("`") == 0


@pytest.mark.parametrize("name", ["", "a\nb", "`quoted`", "x" * 201])
def test_bad_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        quote_ident(name)
