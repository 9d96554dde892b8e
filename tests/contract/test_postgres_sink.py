"""The PostgreSQL sink against a real PostgreSQL: what ends up in the tables after write()."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cdcd.errors import BadRows, SchemaMismatch
from cdcd.events import CqlDuration, Op, RangeBound
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping, create_sink
from cdcd.sinks.postgres import PostgresSink
from cdcd.sinks.postgres.types import JSON_DECODER
from tests.contract.builders import ev, schema


class Config:
    def __init__(self, dsn: str) -> None:
        self.kind = "postgres"
        self.dsn = dsn
        self.pool_size = 2


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = create_sink("pg", Config(pg_dsn))
    assert isinstance(s, PostgresSink)
    await s.connect()
    await s.healthcheck()
    yield s
    await s.aclose()


async def rows(conn: asyncpg.Connection, table: str = "ks.t", where: str = "") -> list[dict[str, Any]]:
    schema_, name = table.split(".")
    recs = await conn.fetch(f'SELECT * FROM "{schema_}"."{name}" {where} ORDER BY 1, 2')
    return [dict(r) for r in recs]


SIMPLE = [
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("v1", "text", "regular"),
    ("v2", "int", "regular"),
]


async def setup(sink: PostgresSink, sch: TableSchema, delete: str = "hard") -> TableMapping:
    m = TableMapping(source="ks.t", target_schema="ks", target_table="t", delete=delete)  # type: ignore[arg-type]
    await sink.ensure_table(m, sch)
    return m


async def test_every_cql_type_round_trips(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    types = {
        "a_ascii": ("ascii", "abc"),
        "a_text": ("text", "zażółć 😀"),
        "a_tinyint": ("tinyint", -128),
        "a_smallint": ("smallint", 32767),
        "a_int": ("int", -(2**31)),
        "a_bigint": ("bigint", 2**63 - 1),
        "a_varint": ("varint", 10**40 + 7),
        "a_decimal": ("decimal", decimal.Decimal("-12345678901234567890.000000000123")),
        "a_float": ("float", 1.5),
        "a_double": ("double", 1e300),
        "a_boolean": ("boolean", True),
        "a_uuid": ("uuid", uuid.UUID("12345678-1234-4234-8234-123456789abc")),
        "a_timeuuid": ("timeuuid", uuid.uuid1()),
        "a_timestamp": ("timestamp", dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=dt.UTC)),
        "a_date": ("date", dt.date(1, 1, 1)),
        "a_date_max": ("date", dt.date(9999, 12, 31)),
        "a_ts_min": ("timestamp", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        "a_time": ("time", 86399_999_999_999),
        "a_duration": ("duration", CqlDuration(14, -3, 3_600_000_001_000)),
        "a_inet4": ("inet", "10.1.2.3"),
        "a_inet6": ("inet", "2001:db8::1"),
        "a_blob": ("blob", b"\x00\xffbin"),
        "f_list": ("frozen<list<int>>", [3, 1, 3]),
        "f_set": ("frozen<set<text>>", ["a", "b"]),
        "f_map": ("frozen<map<int, text>>", {1: "x", 2: "y"}),
        "a_tuple": ("tuple<int, text, frozen<list<int>>>", (1, "t", [2])),
        "f_udt": ("frozen<ut>", {"a": 1, "b": None}),
        "n_list": ("list<text>", {uuid.uuid1(): "first", uuid.uuid1(): "second"}),
        "n_set": ("set<int>", [5, 1]),
        "n_map": ("map<text, decimal>", {"k": decimal.Decimal("1.10")}),
        "n_udt": ("ut", {"a": 7}),
        "nested": ("frozen<list<frozen<map<text, int>>>>", [{"a": 1}, {}]),
    }
    sch = schema([("pk", "int", "partition_key"), *[(n, t, "regular") for n, (t, _) in types.items()]])
    m = await setup(sink, sch)
    out = await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={n: v for n, (_, v) in types.items()})])
    assert out.applied == 1
    (row,) = await rows(conn)
    expect = {n: v for n, (_, v) in types.items()}
    expect |= {
        "a_varint": decimal.Decimal(10**40 + 7),
        "a_inet4": ipaddress.ip_address("10.1.2.3"),
        "a_inet6": ipaddress.ip_address("2001:db8::1"),
        "a_duration": CqlDuration(14, -3, 3_600_000_001_000),
        "f_map": {"1": "x", "2": "y"},
        "a_tuple": [1, "t", [2]],
        "n_list": ["first", "second"],
        "n_set": [1, 5],
        "n_map": {"k": decimal.Decimal("1.10")},
        "n_udt": {"a": 7, "b": None},
        "nested": [{"a": 1}, {}],
    }
    for name, want in expect.items():
        assert row[name] == want, name
    # Stored as real dates, not as ±infinity.
    assert await conn.fetchval('SELECT a_date::text || a_date_max::text || a_ts_min::text FROM "ks"."t"') == (
        "0001-01-019999-12-310001-01-01 00:00:00+00"
    )
    assert row["_cdc_keys_n_list"] == list(types["n_list"][1])  # type: ignore[arg-type]
    assert row["_cdc_row_marker"] is True and row["_cdc_deleted"] is False


async def test_partial_update_and_null_setting(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    m = await setup(sink, schema(SIMPLE))
    await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v1": "a", "v2": 1})])
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"v2": 2})])
    assert [(r["v1"], r["v2"]) for r in await rows(conn)] == [("a", 2)]
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, deleted=frozenset({"v1"}))])
    assert [(r["v1"], r["v2"]) for r in await rows(conn)] == [(None, 2)]


async def test_row_created_by_update_vanishes_when_its_columns_become_null(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    m = await setup(sink, schema(SIMPLE))
    await sink.write(
        m,
        [
            ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"v1": "a"}),
            ev(Op.INSERT, {"pk": 2, "ck": 1}, values={"v1": "b"}),
        ],
    )
    await sink.write(
        m,
        [
            ev(Op.UPDATE, {"pk": 1, "ck": 1}, deleted=frozenset({"v1"})),
            ev(Op.UPDATE, {"pk": 2, "ck": 1}, deleted=frozenset({"v1"})),
        ],
    )
    # pk 1 had no row marker: it is gone, as in Scylla; pk 2 was INSERTed and survives.
    assert [(r["pk"], r["v1"]) for r in await rows(conn)] == [(2, None)]


async def test_collection_deltas_are_applied_exactly(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    sch = schema([("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("s", "set<text>", "regular"),
                  ("mp", "map<int, text>", "regular"), ("u", "ut", "regular")])  # fmt: skip
    m = await setup(sink, sch)
    k1, k2, k3, k0 = (uuid.uuid1() for _ in range(4))
    key = {"pk": 1}
    await sink.write(m, [ev(Op.INSERT, key, values={"l": {k1: 1, k2: 2}, "s": ["b", "a"], "mp": {1: "x"}, "u": {"a": 1}},
                            deleted=frozenset({"l", "s", "mp", "u"}))])  # fmt: skip
    # Separate batches: each delta merges with what PostgreSQL already holds.
    await sink.write(m, [ev(Op.UPDATE, key, values={"l": {k3: 3}})])  # append
    prepend = uuid.UUID(int=(k0.int & ~(0xFFFFFFFFFFFFFFF << 68)) | (1 << 76) | (k0.int & ((1 << 64) - 1)))
    await sink.write(
        m, [ev(Op.UPDATE, key, deleted_elements={"l": [k2]}, values={"s": ["c"], "mp": {2: "y"}})]
    )
    await sink.write(
        m,
        [ev(Op.UPDATE, key, deleted_elements={"s": ["a"], "mp": [1], "u": ["a"]}, values={"u": {"b": "B"}})],
    )
    (row,) = await rows(conn)
    assert row["l"] == [1, 3] and row["_cdc_keys_l"] == [k1, k3]
    assert row["s"] == ["b", "c"]
    assert row["mp"] == {"2": "y"}
    assert row["u"] == {"a": None, "b": "B"}
    # Overwrite = clear + add, in the same event.
    await sink.write(m, [ev(Op.UPDATE, key, values={"l": {prepend: 9}}, deleted=frozenset({"l"}))])
    (row,) = await rows(conn)
    assert row["l"] == [9]
    # Removing every element makes the collection null, like CQL.
    await sink.write(m, [ev(Op.UPDATE, key, deleted_elements={"s": ["b", "c"]})])
    (row,) = await rows(conn)
    assert row["s"] is None


async def test_replaying_collection_deltas_is_idempotent(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema(
        [("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("s", "set<int>", "regular")]
    )
    m = await setup(sink, sch)
    k1, k2 = uuid.uuid1(), uuid.uuid1()
    batch = [
        ev(Op.INSERT, {"pk": 1}, values={"l": {k1: 1}, "s": [1]}),
        ev(Op.UPDATE, {"pk": 1}, values={"l": {k2: 2}, "s": [2]}),
    ]
    assert (await sink.write(m, batch)).applied == 2
    again = await sink.write(m, batch)
    assert again.skipped_stale == 2 and again.applied == 0  # both folded events were stale
    (row,) = await rows(conn)
    assert row["l"] == [1, 2] and row["s"] == [1, 2]


async def test_many_changes_to_one_key_in_one_batch_end_in_the_final_state(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    m = await setup(sink, schema(SIMPLE))
    k = {"pk": 1, "ck": 1}
    batch = [
        ev(Op.INSERT, k, values={"v1": "a", "v2": 1}),
        ev(Op.UPDATE, k, values={"v2": 2}),
        ev(Op.ROW_DELETE, k),
        ev(Op.UPDATE, k, values={"v1": "b"}),
        ev(Op.UPDATE, {"pk": 1, "ck": 2}, values={"v2": 5}),
        ev(Op.UPDATE, k, values={"v2": 3}),
    ]
    await sink.write(m, batch)
    got = [(r["ck"], r["v1"], r["v2"], r["_cdc_row_marker"]) for r in await rows(conn)]
    assert got == [(1, "b", 3, False), (2, None, 5, False)]


async def test_version_guard_skips_older_events(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    m = await setup(sink, schema(SIMPLE))
    k = {"pk": 1, "ck": 1}
    await sink.write(m, [ev(Op.INSERT, k, wt=2000, values={"v1": "new"})])
    out = await sink.write(m, [ev(Op.UPDATE, k, wt=1000, values={"v1": "old"})])
    assert out.skipped_stale == 1 and out.applied == 0
    await sink.write(m, [ev(Op.ROW_DELETE, k, wt=1500)])  # an older delete does not remove newer data
    assert [(r["v1"], r["_cdc_write_time"]) for r in await rows(conn)] == [("new", 2000)]


@pytest.mark.parametrize("strategy", ["hard", "soft", "tombstone"])
async def test_row_partition_and_range_deletes(
    sink: PostgresSink, conn: asyncpg.Connection, strategy: str
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("c1", "int", "clustering"), ("c2", "int", "clustering"),
                  ("v", "int", "regular")], order=("asc", "desc"))  # fmt: skip
    m = await setup(sink, sch, strategy)
    inserts = [ev(Op.INSERT, {"pk": p, "c1": a, "c2": b}, values={"v": p * 100 + a * 10 + b})
               for p in (1, 2) for a in (0, 1, 2) for b in (0, 1, 2)]  # fmt: skip
    await sink.write(m, inserts)
    deletes = [
        ev(Op.ROW_DELETE, {"pk": 1, "c1": 0, "c2": 0}),
        # c1 = 1 AND c2 < 2 with c2 DESC: in clustering order that is (1, 1) .. end of c1 = 1.
        ev(
            Op.RANGE_DELETE,
            {"pk": 1},
            range=RangeBound(start=(1, 1), start_inclusive=True, end=(1,), end_inclusive=True),
        ),
        ev(
            Op.RANGE_DELETE,
            {"pk": 1},
            range=RangeBound(start=(2,), start_inclusive=False, end=(), end_inclusive=True),
        ),
        ev(Op.PARTITION_DELETE, {"pk": 2}),
    ]
    await sink.write(m, deletes)
    live_where = "WHERE NOT _cdc_deleted" if strategy == "soft" else ""
    live = [(r["pk"], r["c1"], r["c2"]) for r in await rows(conn, where=live_where)]
    assert sorted(live) == [(1, 0, 1), (1, 0, 2), (1, 1, 2), (1, 2, 0), (1, 2, 1), (1, 2, 2)]
    if strategy == "soft":
        dead = await rows(conn, where="WHERE _cdc_deleted")
        assert len(dead) == 12 and all(r["_cdc_deleted_at"] is not None and r["v"] is not None for r in dead)
    if strategy == "tombstone":
        await sink.write(m, deletes)  # a replay adds no history rows
        hist = await conn.fetch('SELECT _cdc_op, pk, c1, c2 FROM "ks"."t_history" ORDER BY _cdc_time')
        assert [tuple(h) for h in hist] == [
            ("row_delete", 1, 0, 0), ("range_delete", 1, None, None), ("range_delete", 1, None, None),
            ("partition_delete", 2, None, None),
        ]  # fmt: skip


async def test_soft_deleted_row_is_revived_empty(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    m = await setup(sink, schema(SIMPLE), "soft")
    k = {"pk": 1, "ck": 1}
    await sink.write(m, [ev(Op.INSERT, k, values={"v1": "a", "v2": 1})])
    await sink.write(m, [ev(Op.ROW_DELETE, k)])
    await sink.write(m, [ev(Op.UPDATE, k, values={"v2": 2})])
    (row,) = await rows(conn)
    assert (row["v1"], row["v2"], row["_cdc_deleted"], row["_cdc_deleted_at"]) == (None, 2, False, None)


async def test_static_columns_live_in_a_side_table(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    sch = schema(
        [
            ("pk", "int", "partition_key"),
            ("ck", "int", "clustering"),
            ("s", "text", "static"),
            ("v", "int", "regular"),
        ]
    )
    m = await setup(sink, sch)
    await sink.write(
        m,
        [
            ev(Op.UPDATE, {"pk": 1}, static=True, values={"s": "S"}),
            ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": 1}),
        ],
    )
    assert [(r["pk"], r["s"]) for r in await rows(conn, "ks.t_static")] == [(1, "S")]
    assert "s" not in (await rows(conn))[0]
    await sink.write(
        m,
        [
            ev(Op.INSERT, {"pk": 1, "ck": 2}, values={"v": 2}),
            ev(Op.UPDATE, {"pk": 2}, static=True, values={"s": "only static"}),
            ev(Op.INSERT, {"pk": 3, "ck": 1}, values={"v": 3}),
        ],
    )
    # <table>_view shows what SELECT * shows in Scylla: static cells on every row of the partition.
    view = await conn.fetch('SELECT pk, ck, s, v FROM "ks"."t_view" ORDER BY pk, ck')
    assert [tuple(r) for r in view] == [
        (1, 1, "S", 1), (1, 2, "S", 2), (2, None, "only static", None), (3, 1, None, 3),
    ]  # fmt: skip
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"pk": p}) for p in (1, 2, 3)])
    assert await rows(conn, "ks.t_static") == [] and await rows(conn) == []
    assert await conn.fetch('SELECT * FROM "ks"."t_view"') == []


async def test_bad_rows_are_isolated_and_nothing_is_committed(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("f", "float", "regular")])
    m = await setup(sink, sch)
    batch = [ev(Op.INSERT, {"pk": i}, values={"v": f"row {i}"}) for i in range(100)]
    batch[17] = ev(Op.INSERT, {"pk": 17}, values={"v": "nul\x00byte"})
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert list(err.value.errors) == [17] and "NUL" in err.value.errors[17]
    assert await rows(conn) == []
    # A value PostgreSQL itself refuses (real overflow, SQLSTATE 22003) is found by bisection.
    batch[17] = ev(Op.INSERT, {"pk": 17}, values={"f": 1e300})
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert list(err.value.errors) == [17]
    assert await rows(conn) == []
    good = batch[:17] + batch[18:]
    assert (await sink.write(m, good)).applied == 99
    assert (await sink.write(m, good)).applied == 0  # the retry of the good rows applies nothing twice
    assert await conn.fetchval('SELECT count(*) FROM "ks"."t"') == 99


async def test_identifiers_are_quoted_and_validated(sink: PostgresSink, conn: asyncpg.Connection) -> None:
    evil = 'x"; DROP TABLE y; --'
    sch = schema([("pk", "int", "partition_key"), (evil, "text", "regular")])
    m = TableMapping(source="ks.t", target_schema="Weird Schema", target_table='t"q', delete="hard")
    await sink.ensure_table(m, sch)
    await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={evil: "v"})])
    assert (
        await conn.fetchval(f'SELECT "{evil.replace(chr(34), chr(34) * 2)}" FROM "Weird Schema"."t""q"')
        == "v"
    )
    with pytest.raises(SchemaMismatch):
        await sink.ensure_table(
            TableMapping(source="ks.t", target_schema="ks", target_table="x" * 64), schema(SIMPLE)
        )


async def test_jsonb_values_decode_losslessly() -> None:
    assert JSON_DECODER.decode(b'{"a": 1.10}') == {"a": decimal.Decimal("1.10")}
