"""postgres/types.py: the CQL -> PostgreSQL type map and value conversion (pure)."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid

import pytest

from cdcd.events import CqlDuration
from cdcd.schema import UdtDef, parse_cql_type
from cdcd.sinks.postgres.types import (
    JSON_DECODER,
    JSON_ENCODER,
    contains_nul,
    json_value,
    nul_check,
    pg_type,
    to_pg,
)

UT = UdtDef("ks", "ut", ("a",), (parse_cql_type("text"),))


def t(text: str):  # type: ignore[no-untyped-def]
    return parse_cql_type(text, lambda _: UT)


@pytest.mark.parametrize(
    ("cql", "pg"),
    [
        ("ascii", "text"), ("text", "text"), ("varchar", "text"),
        ("tinyint", "smallint"), ("smallint", "smallint"), ("int", "integer"), ("bigint", "bigint"),
        ("varint", "numeric"), ("decimal", "numeric"), ("float", "real"), ("double", "double precision"),
        ("boolean", "boolean"), ("uuid", "uuid"), ("timeuuid", "uuid"),
        ("timestamp", "timestamp with time zone"), ("date", "date"), ("time", "bigint"),
        ("duration", "interval"), ("inet", "inet"), ("blob", "bytea"),
        ("list<int>", "integer[]"), ("frozen<set<text>>", "text[]"), ("set<timeuuid>", "uuid[]"),
        ("list<blob>", "bytea[]"), ("map<int, text>", "jsonb"), ("frozen<map<text, int>>", "jsonb"),
        ("tuple<int, text>", "jsonb"), ("ut", "jsonb"), ("frozen<ut>", "jsonb"),
        ("list<frozen<list<int>>>", "jsonb"), ("set<frozen<tuple<int, int>>>", "jsonb"),
    ],
)  # fmt: skip
def test_type_map(cql: str, pg: str) -> None:
    assert pg_type(t(cql)) == pg


def test_scalar_conversions_are_lossless() -> None:
    assert to_pg(t("varint"))(10**40) == decimal.Decimal(10**40)
    assert to_pg(t("decimal"))(decimal.Decimal("1.10")) == decimal.Decimal("1.10")
    assert to_pg(t("inet"))("::1") == ipaddress.ip_address("::1")
    # interval keeps months and days apart; nanoseconds below a microsecond are dropped.
    assert to_pg(t("duration"))(CqlDuration(1, -2, 3_000_999)) == (1, -2, 3_000)
    assert to_pg(t("time"))(86_399_999_999_999) == 86_399_999_999_999
    for name in ("text", "int", "bigint", "blob", "boolean", "uuid", "timestamp", "date", "double"):
        assert to_pg(t(name))(None) is None


def test_sets_are_stored_in_cql_order() -> None:
    early = uuid.UUID("00000001-0000-1000-8000-000000000000")
    late = uuid.UUID("00000000-0001-1000-8000-000000000000")  # larger time_mid: later, smaller bytes
    assert to_pg(t("set<timeuuid>"))([late, early]) == [early, late]
    mixed = to_pg(t("set<inet>"))(["::1", "10.0.0.1"])
    assert mixed == [ipaddress.ip_address("::1"), ipaddress.ip_address("10.0.0.1")]


def test_json_forms() -> None:
    value = {
        1: [dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)],
        False: (b"\x00\xff", uuid.UUID(int=1), CqlDuration(1, 2, 3)),
        b"k": {"nested": [float("nan"), float("inf"), 1.5, decimal.Decimal("2.50")]},
    }
    assert json_value(value) == {
        "1": ["2024-01-02", "2024-01-02T03:04:05+00:00"],
        "false": [
            "\\x00ff",
            "00000000-0000-0000-0000-000000000001",
            {"months": 1, "days": 2, "nanoseconds": 3},
        ],
        "\\x6b": {"nested": ["NaN", "Infinity", decimal.Decimal("1.5"), decimal.Decimal("2.50")]},
    }
    # Decimals survive the jsonb round trip exactly (scale included).
    assert JSON_DECODER.decode(JSON_ENCODER.encode(json_value({"d": decimal.Decimal("2.50")}))) == {
        "d": decimal.Decimal("2.50")
    }
    with pytest.raises(TypeError, match="no JSON form"):
        json_value(object())


def test_nul_checks_only_where_text_can_be() -> None:
    assert nul_check(t("int")) is None and nul_check(t("blob")) is None
    assert nul_check(t("list<int>")) is None
    text = nul_check(t("text"))
    assert text is not None and text("a\x00") and not text("a")
    nested = nul_check(t("frozen<map<int, frozen<list<text>>>>"))
    assert nested is not None and nested({1: ["ok", "n\x00"]}) and not nested({1: ["ok"]})
    udt = nul_check(t("ut"))
    assert udt is not None and udt({"a": "\x00"})
    assert contains_nul({"k\x00": 1}) and not contains_nul((1, 2.0, None))
