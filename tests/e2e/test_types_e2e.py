"""Every CQL type round-trips field by field: driver -> emulator -> CDC log -> ``cdcd run`` ->
PostgreSQL, compared with ``SELECT *`` of the source (R-01, R-05; docs/type-map.md)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from cassandra.util import Duration

from tests.e2e.compare import pg_connect, pg_snapshot, source_schema, source_snapshot, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import TableSpec

D = decimal.Decimal
UTC = dt.UTC

SCHEMA = [
    "CREATE KEYSPACE e2e WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}",
    "CREATE TYPE e2e.addr (street text, zip int, tags frozen<set<text>>, at timestamp)",
    "CREATE TYPE e2e.point (x double, y double)",
    """CREATE TABLE e2e.types (
        pk int, ck timeuuid, ck2 text,
        st text static, st_l list<int> static,
        a_ascii ascii, a_bigint bigint, a_blob blob, a_boolean boolean, a_date date, a_decimal decimal,
        a_double double, a_duration duration, a_float float, a_inet inet, a_int int, a_smallint smallint,
        a_text text, a_time time, a_timestamp timestamp, a_timeuuid timeuuid, a_tinyint tinyint,
        a_uuid uuid, a_varchar varchar, a_varint varint,
        l_int list<int>, l_text list<text>, l_ts list<timestamp>, l_dur list<duration>, l_dbl list<double>,
        s_int set<int>, s_text set<text>, s_inet set<inet>, s_uuid set<uuid>, s_tuuid set<timeuuid>,
        s_date set<date>, s_blob set<blob>, s_dec set<decimal>, s_vi set<varint>,
        m_text_int map<text, int>, m_int_text map<int, text>, m_date_dec map<date, decimal>,
        m_uuid_blob map<uuid, blob>, m_bool_dbl map<boolean, double>, m_ts_inet map<timestamp, inet>,
        m_blob_dur map<blob, duration>, m_dbl_time map<double, time>, m_vi_float map<varint, float>,
        fl frozen<list<int>>, fs frozen<set<text>>, fm frozen<map<text, frozen<list<int>>>>,
        tup tuple<int, text, frozen<list<double>>>, tup_n tuple<date, duration, blob>,
        u addr, fu frozen<addr>,
        l_map list<frozen<map<text, int>>>, s_tup set<frozen<tuple<int, text>>>,
        m_list map<int, frozen<list<text>>>, l_udt list<frozen<point>>, m_set map<text, frozen<set<int>>>,
        m_tup_key map<frozen<tuple<int, text>>, text>,
        PRIMARY KEY (pk, ck, ck2)
    ) WITH CLUSTERING ORDER BY (ck DESC, ck2 ASC) AND cdc = {'enabled': true}""",
    """CREATE TABLE e2e.keys (
        k_text text, k_bigint bigint, k_uuid uuid,
        c_date date, c_ts timestamp, c_inet inet, c_blob blob, c_dec decimal, c_vi varint, c_bool boolean,
        v text,
        PRIMARY KEY ((k_text, k_bigint, k_uuid), c_date, c_ts, c_inet, c_blob, c_dec, c_vi, c_bool)
    ) WITH CLUSTERING ORDER BY (c_date ASC, c_ts DESC) AND cdc = {'enabled': true}""",
]

ATOMIC = [
    "a_ascii", "a_bigint", "a_blob", "a_boolean", "a_date", "a_decimal", "a_double", "a_duration",
    "a_float", "a_inet", "a_int", "a_smallint", "a_text", "a_time", "a_timestamp", "a_timeuuid",
    "a_tinyint", "a_uuid", "a_varchar", "a_varint",
]  # fmt: skip

U1, U2, U3 = (
    uuid.UUID(int=(1 << 127) + 5),
    uuid.UUID(int=3),
    uuid.UUID("8f0e0a3c-0000-4000-8000-00000000000a"),
)
T1, T2, T3 = uuid.uuid1(), uuid.uuid1(), uuid.uuid1()

# Edge values per atomic column: maxima, minima, special floats, precision, unicode, empty values.
ROWS_ATOMIC: list[dict[str, Any]] = [
    {
        "a_ascii": "plain ascii ~!@#$%^&*()_+{}|:<>?", "a_bigint": 2**63 - 1, "a_blob": b"\x00\x01\xfe\xff",
        "a_boolean": True, "a_date": dt.date(9999, 12, 31), "a_decimal": D("-12345678901234567890.123456789000"),
        "a_double": 1.7976931348623157e308, "a_duration": Duration(14, 3, 3_723_000_001_500),
        "a_float": 3.4028234663852886e38, "a_inet": "2001:db8::ff00:42:8329", "a_int": 2**31 - 1,
        "a_smallint": 32767, "a_text": "日本語 ✓ \"q\" 'a' \\ \t\n €", "a_time": 86_399_999_999_999,
        "a_timestamp": dt.datetime(9999, 12, 31, 23, 59, 59, 999000), "a_timeuuid": T1,
        "a_tinyint": 127, "a_uuid": U1, "a_varchar": "ß" * 300, "a_varint": 10**40 + 7,
    },
    {
        "a_ascii": "", "a_bigint": -(2**63), "a_blob": b"", "a_boolean": False, "a_date": dt.date(1, 1, 1),
        "a_decimal": D("1.10"), "a_double": float("-inf"), "a_duration": Duration(-1, -2, -3000),
        "a_float": float("nan"), "a_inet": "0.0.0.0", "a_int": -(2**31), "a_smallint": -32768, "a_text": "",
        "a_time": 0, "a_timestamp": dt.datetime(1, 1, 1, 0, 0, 0), "a_timeuuid": T2, "a_tinyint": -128,
        "a_uuid": U2, "a_varchar": "x", "a_varint": -(10**40),
    },
    {
        "a_ascii": "0", "a_bigint": 0, "a_blob": bytes(range(256)), "a_boolean": True,
        "a_date": dt.date(1969, 12, 31), "a_decimal": D("1E+3"), "a_double": -0.0,
        "a_duration": Duration(0, 0, 1), "a_float": 0.1, "a_inet": "255.255.255.255", "a_int": 0,
        "a_smallint": 0, "a_text": "𝄞 emoji 😀", "a_time": 1, "a_timestamp": dt.datetime(1969, 12, 31, 23, 59, 59, 1000),
        "a_timeuuid": T3, "a_tinyint": 0, "a_uuid": U3, "a_varchar": "v", "a_varint": 0,
    },
    {"a_double": float("nan"), "a_float": float("inf"), "a_decimal": D("0.000000000000000000000000000001")},
    {"a_double": 5e-324, "a_float": -1.401298464324817e-45, "a_decimal": D("-0.5")},
]  # fmt: skip

COLLECTIONS: dict[str, Any] = {
    "l_int": [3, 1, 2, 1, -(2**31)], "l_text": ["b", "", "a", "日本"],
    "l_ts": [dt.datetime(2024, 2, 29, 12, 0, 0, 123000), dt.datetime(1970, 1, 1)],
    "l_dur": [Duration(1, 2, 3000), Duration(0, 0, 0)], "l_dbl": [1.5, float("nan"), float("-inf"), -0.0],
    "s_int": {5, -1, 3, 100}, "s_text": {"b", "a", "é", "Z", ""}, "s_inet": {"10.0.0.2", "9.0.0.1", "10.0.0.10"},
    "s_uuid": {U1, U2, U3}, "s_tuuid": {T3, T1, T2},
    "s_date": {dt.date(2000, 1, 1), dt.date(1, 1, 1), dt.date(1999, 12, 31)},
    "s_blob": {b"\xff", b"\x00", b"\x01\x02"}, "s_dec": {D("1.5"), D("-2"), D("10")}, "s_vi": {10**30, -5, 7},
    "m_text_int": {"one": 1, "two": 2, "": 0, "ü": -7}, "m_int_text": {1: "a", -5: "", 2**31 - 1: "max"},
    "m_date_dec": {dt.date(2024, 1, 1): D("3.14"), dt.date(1, 1, 1): D("-0.001")},
    "m_uuid_blob": {U1: b"\x00", U2: b""}, "m_bool_dbl": {True: 1.25, False: float("nan")},
    "m_ts_inet": {dt.datetime(2020, 5, 17, 1, 2, 3, 4000): "::1", dt.datetime(1960, 1, 1): "192.168.1.1"},
    "m_blob_dur": {b"\x01": Duration(1, 1, 1), b"": Duration(-2, 0, -5)},
    "m_dbl_time": {1.5: 5, -0.25: 86_399_999_999_999}, "m_vi_float": {10**25: 0.5, -3: float("inf")},
    "fl": [1, 1, 2], "fs": {"x", "y"}, "fm": {"k": [1, 2], "e": []},
    "tup": (7, "seven", [1.0, 2.5]), "tup_n": (dt.date(2024, 12, 24), Duration(1, 0, 999), b"\xab"),
    "u": ("Main St 1", 12345, {"home", "work"}, dt.datetime(2021, 6, 1, 8, 30)),
    "fu": ("Side St", None, None, None),
    "l_map": [{"a": 1}, {}, {"b": 2, "c": 3}], "s_tup": {(1, "a"), (2, None), (-1, "z")},
    "m_list": {1: ["x", "y"], 2: []}, "l_udt": [(1.0, 2.0), (None, -0.5)], "m_set": {"s": {3, 1, 2}},
    "m_tup_key": {(1, "a"): "first", (2, "b"): "second"},
}  # fmt: skip


def _prepare_insert(cql: Any, table: str, cols: list[str]) -> Any:
    return cql.prepare(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})")


def write_all_types(cql: Any) -> None:
    """Inserts covering every type, then element-level updates of every multicell column."""
    for i, row in enumerate(ROWS_ATOMIC):
        cols = ["pk", "ck", "ck2", *row]
        cql.execute(_prepare_insert(cql, "e2e.types", cols), [i % 2, uuid.uuid1(), f"r{i}", *row.values()])
    cols = ["pk", "ck", "ck2", *COLLECTIONS]
    cql.execute(_prepare_insert(cql, "e2e.types", cols), [0, T1, "coll", *COLLECTIONS.values()])
    cql.execute(_prepare_insert(cql, "e2e.types", cols), [1, T2, "coll2", *COLLECTIONS.values()])
    # A row created by an UPDATE only, and static cells (one partition has static cells only).
    cql.execute("UPDATE e2e.types SET a_text = 'via update', st = 'static 1', st_l = [1, 2] WHERE pk = 1 AND ck = "
                f"{T3} AND ck2 = 'upd'")  # fmt: skip
    cql.execute("UPDATE e2e.types SET st = 'static only' WHERE pk = 7")
    # Element-level changes of every kind of multicell column on row (0, T1, 'coll').
    where = f"WHERE pk = 0 AND ck = {T1} AND ck2 = 'coll'"
    for stmt in [
        "l_int = l_int + [9, 10]", "l_int = [-1] + l_int", "l_int = l_int - [1]", "l_text = ['only']",
        "s_int = s_int + {42}", "s_int = s_int - {5}", "s_text = s_text - {'Z'}", "s_tuuid = s_tuuid - {"
        + str(T2) + "}", "s_inet = s_inet + {'::2'}",
        "m_text_int['three'] = 3", "m_text_int = m_text_int - {'one'}", "m_int_text = m_int_text + {7: 'seven'}",
        "u.zip = 99999", "u.street = null", "u.tags = {'t'}", "m_blob_dur = m_blob_dur - {0x01}",
        "st_l = st_l + [3]",
    ]:  # fmt: skip
        cql.execute(f"UPDATE e2e.types SET {stmt} {where}")
    cql.execute(f"DELETE l_dbl[1], m_bool_dbl[false], s_blob FROM e2e.types {where}")
    cql.execute(f"UPDATE e2e.types SET a_int = 5, a_text = null {where}")
    # Key types: composite partition key and a clustering key of many types.
    ins = _prepare_insert(cql, "e2e.keys", ["k_text", "k_bigint", "k_uuid", "c_date", "c_ts", "c_inet",
                                             "c_blob", "c_dec", "c_vi", "c_bool", "v"])  # fmt: skip
    for j in range(4):
        cql.execute(ins, [f"k{j % 2} ✓", -(2**62) + j, U1 if j % 2 else U2, dt.date(2000 + j, 1, 1),
                          dt.datetime(2020, 1, 1, 0, 0, j), "::1" if j else "10.0.0.1", bytes([j]),
                          D(f"{j}.{j}0"), 10**20 * (j - 2), bool(j % 2), f"v{j}"])  # fmt: skip


async def test_every_cql_type_round_trips_into_postgresql(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    for stmt in SCHEMA:
        cql.execute(stmt)
    cdcd = make_cdcd(
        [TableSpec("e2e.types", "replica.types"), TableSpec("e2e.keys", "replica.keys", delete="soft")]
    )
    cdcd.start()
    cdcd.wait_ready()
    write_all_types(cql)

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    for source, target in (("e2e.types", "replica.types"), ("e2e.keys", "replica.keys")):
        schema = source_schema(cql, source)
        snap = await wait_converged(cql, schema, pg_dsn, target, timeout=60, alive=alive)
        assert snap.rows, f"{source}: nothing replicated"
    # Every column of the type table was exercised with a non-null value in the source.
    schema = source_schema(cql, "e2e.types")
    source = source_snapshot(cql, schema)
    for col in schema.regular_columns:
        assert any(r[col.name] is not None for r in source.rows.values()), f"{col.name} never set"
    assert source.static, "static columns not exercised"
    conn = await pg_connect(pg_dsn)
    try:
        replica = await pg_snapshot(conn, schema, "replica.types")
        assert replica.static == source.static
        # Documented lossy points hold exactly: sub-µs duration nanoseconds dropped in interval columns.
        durations = {r["a_duration"] for r in replica.rows.values() if r["a_duration"] is not None}
        assert (14, 3, 3_723_000_001_000) in durations
    finally:
        await conn.close()
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()
