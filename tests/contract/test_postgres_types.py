"""Every CQL type through the PostgreSQL sink and back, field by field (R-01, R-05).

Each value is a canonical ``ChangeEvent`` value (cdcd/events.py); it is written by the sink, read
back with the sink's codecs and turned back into a canonical value with ``postgres.types.from_pg``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from cdcd.errors import BadRows, SchemaMismatch
from cdcd.events import CqlDuration, Op, timeuuid_sort_key
from cdcd.schema import CdcOptions, UdtDef, parse_cql_type
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from cdcd.sinks.postgres.types import from_pg, pg_type
from tests.contract.test_postgres_sink import Config, ev, schema, setup

UT = UdtDef("ks", "ut", ("a", "b"), (parse_cql_type("int"), parse_cql_type("text")))


def tu(t: int, node: int = 0) -> uuid.UUID:
    """A version-1 uuid with time ``t`` (100 ns units) and node ``node``."""
    return uuid.UUID(
        fields=(t & 0xFFFFFFFF, (t >> 32) & 0xFFFF, ((t >> 48) & 0x0FFF) | 0x1000, 0x80, 0, node)
    )


TS = dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=dt.UTC)
NAN = float("nan")

# column type -> values of rows 0 and 1 (row 2 has every column null). Sets are given in CQL
# order; non-frozen lists as the {timeuuid: value} cells a delta carries.
VALUES: dict[str, tuple[str, list[Any]]] = {
    "c_ascii": ("ascii", ["abc", ""]),
    "c_text": ("text", ["zażółć 😀", "x" * 10_000]),
    "c_tinyint": ("tinyint", [-128, 127]),
    "c_smallint": ("smallint", [-32768, 32767]),
    "c_int": ("int", [-(2**31), 2**31 - 1]),
    "c_bigint": ("bigint", [-(2**63), 2**63 - 1]),
    "c_varint": ("varint", [10**40 + 7, -(10**60)]),
    "c_decimal": (
        "decimal",
        [decimal.Decimal("-12345678901234567890.000000000123"), decimal.Decimal("1.10")],
    ),
    "c_float": ("float", [1.5, float("-inf")]),
    "c_double": ("double", [1e300, 5e-324]),
    "c_boolean": ("boolean", [True, False]),
    "c_uuid": ("uuid", [uuid.UUID("12345678-1234-4234-8234-123456789abc"), uuid.UUID(int=0)]),
    "c_timeuuid": ("timeuuid", [tu(1), tu(2**59, 5)]),
    "c_timestamp": ("timestamp", [TS, dt.datetime(1, 1, 1, tzinfo=dt.UTC)]),
    "c_timestamp_max": ("timestamp", [dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC), TS]),
    "c_date": ("date", [dt.date(1, 1, 1), dt.date(9999, 12, 31)]),
    "c_time": ("time", [0, 86_399_999_999_999]),
    "c_duration": ("duration", [CqlDuration(14, -3, 3_600_000_001_000), CqlDuration(-1, 0, -1000)]),
    "c_inet": ("inet", ["10.1.2.3", "2001:db8::1"]),
    "c_blob": ("blob", [b"\x00\xffbin", b""]),
    "f_list": ("frozen<list<int>>", [[3, 1, 3], [0]]),
    "f_set": ("frozen<set<text>>", [["a", "b"], ["é"]]),
    "f_set_tu": ("frozen<set<timeuuid>>", [[tu(1, 9), tu(2, 1)], [tu(5)]]),
    "f_set_inet": ("frozen<set<inet>>", [["10.0.0.1", "::1"], ["127.0.0.1"]]),
    "f_list_blob": ("frozen<list<blob>>", [[b"\x00", b""], [b"z"]]),
    "f_map": ("frozen<map<int, text>>", [{1: "x", 2: "y"}, {-5: ""}]),
    "f_map_ts": ("frozen<map<timestamp, double>>", [{TS: 1.5}, {TS: NAN}]),
    "f_map_uuid": (
        "frozen<map<uuid, frozen<list<int>>>>",
        [{uuid.UUID(int=7): [1, 2]}, {uuid.UUID(int=8): []}],
    ),
    "f_map_blob": ("frozen<map<blob, boolean>>", [{b"\x01": True}, {b"": False}]),
    "f_map_key_list": ("frozen<map<frozen<list<int>>, text>>", [{(1, 2): "a"}, {(): "b"}]),
    "c_tuple": ("tuple<int, text, frozen<list<int>>>", [(1, "t", [2]), (None, None, None)]),
    "c_tuple_x": (
        "tuple<date, duration, blob, decimal>",
        [
            (dt.date(2020, 1, 1), CqlDuration(1, 2, 3), b"\xff", decimal.Decimal("0.000")),
            (None, CqlDuration(0, 0, 0), None, decimal.Decimal("-1E+5")),
        ],
    ),
    "f_udt": ("frozen<ut>", [{"a": 1, "b": None}, {"a": None, "b": "zz"}]),
    "nested": ("frozen<list<frozen<map<text, frozen<set<int>>>>>>", [[{"a": [1, 2]}, {}], [{"k": []}]]),
    "n_list": ("list<text>", [{tu(10): "first", tu(20): "second"}, {tu(1): "only"}]),
    "n_list_map": ("list<frozen<map<int, int>>>", [{tu(10): {1: 2}}, {tu(3): {}}]),
    "n_set": ("set<int>", [[1, 5], [-3]]),
    "n_set_tuple": ("set<frozen<tuple<int, text>>>", [[(1, "a"), (2, "b")], [(0, "")]]),
    "n_map": ("map<text, decimal>", [{"k": decimal.Decimal("1.10")}, {"": decimal.Decimal("-0")}]),
    "n_map_date": ("map<date, int>", [{dt.date(2024, 1, 1): 1}, {dt.date(1, 1, 1): 0}]),
    "n_udt": ("ut", [{"a": 7}, {"b": "only b"}]),
}


def expected(cql: str, value: Any) -> Any:
    """What the source would read: non-frozen lists as lists in cell order, empty = null, UDT
    fields all present."""
    t = parse_cql_type(cql, lambda _: UT)
    if value is None:
        return None
    if t.name == "list" and not t.frozen:
        value = [v for _, v in sorted(value.items(), key=lambda kv: timeuuid_sort_key(kv[0]))]
    if t.name == "udt" and not t.frozen:
        value = {"a": None, "b": None} | value
    if t.is_multicell and not value:
        return None
    return value


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (nested)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


async def test_every_cql_type_round_trips_field_by_field(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema([("pk", "int", "partition_key"), *[(n, t, "regular") for n, (t, _) in VALUES.items()]])
    m = await setup(sink, sch)
    batch = [ev(Op.INSERT, {"pk": i}, values={n: vals[i] for n, (_, vals) in VALUES.items()}) for i in (0, 1)]
    batch.append(ev(Op.INSERT, {"pk": 2}, deleted=frozenset(VALUES)))
    assert (await sink.write(m, batch)).applied == 3
    got = {r["pk"]: r for r in await conn.fetch('SELECT * FROM "ks"."t"')}
    mismatches = []
    for name, (cql, vals) in VALUES.items():
        back = from_pg(sch.column(name).type)
        for pk, want in enumerate([*vals, None]):
            have = back(got[pk][name])
            if not same(have, expected(cql, want)):
                mismatches.append(f"{name} ({cql} as {pg_type(sch.column(name).type)}) row {pk}: {have!r}")
    assert mismatches == []


KEY_TYPES = {
    "text": ["", "ключ", "a b"],
    "bigint": [-(2**63), 0, 2**63 - 1],
    "blob": [b"", b"\x00", b"\xff\x00"],
    "timeuuid": [tu(1), tu(2), tu(3, 4)],
    "timestamp": [TS, dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(1, 1, 1, tzinfo=dt.UTC)],
    "decimal": [
        decimal.Decimal("1.0"),
        decimal.Decimal("1.05"),
        decimal.Decimal("-7"),
    ],  # 1.0 = 1.00 in numeric
    "inet": ["10.0.0.1", "::", "::ffff:1.2.3.4"],
    "frozen<list<int>>": [[], [1], [1, 2]],
    "frozen<map<text, int>>": [{}, {"a": 1}, {"a": 1, "b": 2}],
    "tuple<int, text>": [(1, "a"), (1, None), (None, None)],
}


@pytest.mark.parametrize("cql", list(KEY_TYPES))
async def test_key_types_address_their_rows(sink: PostgresSink, conn: asyncpg.Connection, cql: str) -> None:
    sch = schema([("pk", cql, "partition_key"), ("ck", "int", "clustering"), ("v", "int", "regular")])
    m = await setup(sink, sch)
    keys = KEY_TYPES[cql]
    await sink.write(m, [ev(Op.INSERT, {"pk": k, "ck": 1}, values={"v": i}) for i, k in enumerate(keys)])
    # Updates and a row delete find exactly their rows again.
    await sink.write(m, [ev(Op.UPDATE, {"pk": k, "ck": 1}, values={"v": i + 10}) for i, k in enumerate(keys)])
    await sink.write(
        m, [ev(Op.ROW_DELETE, {"pk": keys[1], "ck": 1}), ev(Op.PARTITION_DELETE, {"pk": keys[2]})]
    )
    back = from_pg(sch.column("pk").type)
    rows = [(back(r["pk"]), r["v"]) for r in await conn.fetch('SELECT pk, v FROM "ks"."t"')]
    assert len(rows) == 1 and same(rows[0][0], keys[0]) and rows[0][1] == 10


async def test_naive_timestamps_are_taken_as_utc(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    m = await setup(sink, schema([("pk", "int", "partition_key"), ("ts", "timestamp", "regular")]))
    await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={"ts": dt.datetime(2024, 5, 6, 7, 8, 9, 10000)})])
    assert await conn.fetchval('SELECT ts FROM "ks"."t"') == dt.datetime(
        2024, 5, 6, 7, 8, 9, 10000, tzinfo=dt.UTC
    )


async def test_keys_only_tables_take_rows_from_postimages(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("l", "list<int>", "regular"),
                  ("m", "map<int, text>", "regular")])  # fmt: skip
    m = TableMapping(source="ks.t", target_schema="ks", target_table="t")
    with pytest.raises(SchemaMismatch, match="delta 'keys' without postimage"):
        await sink.ensure_table(m, msgspec.structs.replace(sch, cdc=CdcOptions(enabled=True, delta="keys")))
    sch = msgspec.structs.replace(sch, cdc=CdcOptions(enabled=True, delta="keys", postimage=True))
    await sink.ensure_table(m, sch)
    full = {"pk": 1, "v": "a", "l": [3, 1], "m": {1: "x"}}
    await sink.write(m, [
        ev(Op.INSERT, {"pk": 1}, postimage=full),
        ev(Op.UPDATE, {"pk": 2}, postimage={"pk": 2, "v": "b", "l": None, "m": None}),
    ])  # fmt: skip
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, postimage=full | {"v": None, "l": [1]})])
    got = [(r["pk"], r["v"], r["l"], r["m"]) for r in await conn.fetch('SELECT * FROM "ks"."t" ORDER BY pk')]
    assert got == [(1, None, [1], {"1": "x"}), (2, "b", None, None)]
    with pytest.raises(BadRows, match="no postimage"):
        await sink.write(m, [ev(Op.UPDATE, {"pk": 3})])
