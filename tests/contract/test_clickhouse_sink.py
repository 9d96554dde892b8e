"""The ClickHouse sink against a real ClickHouse engine: what ``SELECT .. FINAL`` shows after write().

Mirrors tests/contract/test_postgres_sink.py case by case, plus the ClickHouse-only guarantees:
a re-sent batch adds no physical rows (insert_deduplication_token) and bad rows store nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.errors import BadRows, SchemaMismatch, SinkUnavailable, UnmanagedTable
from cdcd.events import ChangeEvent, CqlDuration, Op, RangeBound
from cdcd.schema import TableSchema
from cdcd.sinks import TableMapping, create_sink
from cdcd.sinks.clickhouse import ClickHouseSink
from tests.contract import builders
from tests.contract.builders import schema

_seq = itertools.count()


def ev(op: Op, key: dict[str, Any], **kw: Any) -> ChangeEvent:
    """``builders.ev`` with a distinct position per event (even at equal write times)."""
    return builders.ev(op, key, low=next(_seq), **kw)


class Config:
    def __init__(self, url: str) -> None:
        self.kind = "clickhouse"
        self.url = url
        self.username = "default"
        self.password = None


@pytest.fixture
async def sink(clickhouse_url: str) -> AsyncIterator[ClickHouseSink]:
    s = create_sink("ch", Config(clickhouse_url))
    assert isinstance(s, ClickHouseSink)
    await s.connect()
    await s.healthcheck()
    yield s
    await s.aclose()


async def rows(
    ch: Any, db: str, table: str = "t", where: str = "", final: bool = True
) -> list[dict[str, Any]]:
    res = await ch.query(
        f"SELECT * FROM `{db}`.`{table}` {'FINAL' if final else ''} {where} ORDER BY 1, 2",
        query_formats={"Tuple": "tuple"},
    )
    return [dict(zip(res.column_names, r, strict=True)) for r in res.result_rows]


async def count(ch: Any, db: str, table: str = "t") -> int:
    res = await ch.query(f"SELECT count() FROM `{db}`.`{table}`")  # without FINAL: physical rows
    return int(res.result_rows[0][0])


SIMPLE = [
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("v1", "text", "regular"),
    ("v2", "int", "regular"),
]


async def setup(sink: ClickHouseSink, db: str, sch: TableSchema, delete: str = "hard") -> TableMapping:
    m = TableMapping(source="ks.t", target_schema=db, target_table="t", delete=delete)  # type: ignore[arg-type]
    await sink.ensure_table(m, sch)
    return m


async def test_every_cql_type_round_trips(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    l1, l2 = uuid.uuid1(), uuid.uuid1()
    types = {
        "a_ascii": ("ascii", "abc"),
        "a_text": ("text", "zażółć 😀 'q' \\ \t"),
        "a_tinyint": ("tinyint", -128),
        "a_smallint": ("smallint", 32767),
        "a_int": ("int", -(2**31)),
        "a_bigint": ("bigint", 2**63 - 1),
        "a_varint": ("varint", 10**40 + 7),
        "a_decimal": ("decimal", decimal.Decimal("-12345678901234567890.000000000123")),
        "a_decimal_exp": ("decimal", decimal.Decimal("1.10E+400")),
        "a_float": ("float", 1.5),
        "a_double": ("double", 1e300),
        "a_boolean": ("boolean", True),
        "a_uuid": ("uuid", uuid.UUID("12345678-1234-4234-8234-123456789abc")),
        "a_timeuuid": ("timeuuid", uuid.uuid1()),
        "a_timestamp": ("timestamp", dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=dt.UTC)),
        "a_ts_old": ("timestamp", dt.datetime(1, 1, 1, 0, 0, 0, 1000, tzinfo=dt.UTC)),
        "a_date": ("date", dt.date(1, 1, 1)),
        "a_time": ("time", 86399_999_999_999),
        "a_duration": ("duration", CqlDuration(14, -3, 3_600_000_000_001)),
        "a_inet4": ("inet", "10.1.2.3"),
        "a_inet6": ("inet", "2001:db8::1"),
        "a_blob": ("blob", b"\x00\xffbin"),
        "f_list": ("frozen<list<int>>", [3, 1, 3]),
        "f_set": ("frozen<set<text>>", ["a", "b"]),
        "f_map": ("frozen<map<int, text>>", {1: "x", 2: "y"}),
        "a_tuple": ("tuple<int, text, frozen<list<int>>>", (1, "t", [2])),
        "a_tuple_nulls": ("tuple<int, text>", (None, None)),
        "f_udt": ("frozen<ut>", {"a": 1, "b": None}),
        "n_list": ("list<text>", {l1: "first", l2: "second"}),
        "n_set": ("set<int>", [5, 1]),
        "n_map": ("map<text, decimal>", {"k": decimal.Decimal("1.10")}),
        "n_udt": ("ut", {"a": 7}),
        "nested": ("frozen<list<frozen<map<text, int>>>>", [{"a": 1}, {}]),
        "m_listkey": ("map<frozen<list<int>>, blob>", {(1, 2): b"\x01"}),
        "m_inet": ("map<inet, frozen<set<uuid>>>", {"::1": [uuid.UUID(int=5)]}),
        "a_null": ("text", None),
        "a_null_tuple": ("tuple<int, int>", None),
        "a_null_list": ("frozen<list<int>>", None),
    }
    sch = schema([("pk", "int", "partition_key"), *[(n, t, "regular") for n, (t, _) in types.items()]])
    m = await setup(sink, ch_database, sch)
    await setup(sink, ch_database, sch)  # again: the existing table's column types are accepted
    out = await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={n: v for n, (_, v) in types.items()})])
    assert out.applied == 1
    res = await ch.query(
        f"SELECT * FROM `{ch_database}`.`t` FINAL",
        query_formats={"Tuple": "tuple"},
        column_formats={"a_blob": "bytes", "m_listkey": "bytes"},
    )
    (row,) = [dict(zip(res.column_names, r, strict=True)) for r in res.result_rows]
    expect = {n: v for n, (_, v) in types.items()}
    expect |= {
        "a_decimal": "-12345678901234567890.000000000123",  # exact text, scale kept
        "a_decimal_exp": "1.10E+400",
        "a_timestamp": dt.datetime(2024, 2, 29, 23, 59, 59, 999000),  # DateTime64(3, 'UTC'), naive
        "a_ts_old": dt.datetime(1, 1, 1, 0, 0, 0, 1000),
        "a_duration": (14, -3, 3_600_000_000_001),
        "a_inet4": ipaddress.IPv6Address("::ffff:10.1.2.3"),
        "a_inet6": ipaddress.IPv6Address("2001:db8::1"),
        "f_map": {1: "x", 2: "y"},
        "f_udt": (1, None),
        "n_list": ["first", "second"],
        "n_set": [1, 5],
        "n_map": {"k": "1.10"},
        "n_udt": (7, None),
        "m_listkey": [{"key": [1, 2], "value": b"\x01"}],
        "m_inet": {ipaddress.IPv6Address("::1"): [uuid.UUID(int=5)]},
        "a_null_list": [],  # an empty collection is null
    }
    for name, want in expect.items():
        assert row[name] == want, name
    assert row["_cdc_keys_n_list"] == [l1, l2]
    assert (row["_cdc_row_marker"], row["_cdc_deleted"], row["_cdc_is_deleted"]) == (1, 0, 0)
    assert row["_cdc_version"] == (await rows(ch, ch_database))[0]["_cdc_version"]
    # The decimal text converts exactly where ClickHouse decimals reach.
    res = await ch.query(
        f"SELECT toDecimal256(a_decimal, 12) = toDecimal256('-12345678901234567890.000000000123', 12) FROM `{ch_database}`.`t`"
    )
    assert res.result_rows == [(True,)]


async def test_keys_of_many_types_are_read_back_and_updated(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    sch = schema(
        [("p_text", "text", "partition_key"), ("p_blob", "blob", "partition_key"), ("c_ts", "timestamp", "clustering"),
         ("c_inet", "inet", "clustering"), ("c_tuple", "frozen<tuple<int, text>>", "clustering"),
         ("c_dec", "decimal", "clustering"), ("c_list", "frozen<list<text>>", "clustering"),
         ("c_udt", "frozen<ut>", "clustering"), ("v", "int", "regular"), ("w", "int", "regular")]
    )  # fmt: skip
    m = await setup(sink, ch_database, sch)
    key = {
        "p_text": "it's \\ {x:String}", "p_blob": b"\x00\xff'", "c_ts": dt.datetime(2020, 1, 1, 1, 2, 3, 4000, tzinfo=dt.UTC),
        "c_inet": "10.0.0.1", "c_tuple": (None, "q'"), "c_dec": decimal.Decimal("1.50"), "c_list": ["a", "b'"],
        "c_udt": {"a": None, "b": "z"},
    }  # fmt: skip
    await sink.write(m, [ev(Op.INSERT, key, values={"v": 1, "w": 1})])
    await sink.write(m, [ev(Op.UPDATE, key, values={"v": 2})])  # needs the read-back of w
    got = await rows(ch, ch_database)
    assert [(r["v"], r["w"]) for r in got] == [(2, 1)]
    await sink.write(m, [ev(Op.ROW_DELETE, key)])
    assert await rows(ch, ch_database) == []


async def test_partial_update_and_null_setting(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE))
    await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v1": "a", "v2": 1})])
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"v2": 2})])
    assert [(r["v1"], r["v2"]) for r in await rows(ch, ch_database)] == [("a", 2)]
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, deleted=frozenset({"v1"}))])
    assert [(r["v1"], r["v2"]) for r in await rows(ch, ch_database)] == [(None, 2)]


async def test_row_created_by_update_vanishes_when_its_columns_become_null(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE))
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
    assert [(r["pk"], r["v1"]) for r in await rows(ch, ch_database)] == [(2, None)]


async def test_a_frozen_empty_collection_keeps_a_row_alive(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    """An empty frozen collection is a value in CQL (a live cell), unlike null: a row created by
    UPDATEs that holds only one must survive its other columns becoming null, across batches
    (read back from ClickHouse, where ``Array`` cannot be null: ``_cdc_empty`` tells them apart)."""
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("v", "text", "regular"),
                  ("fl", "frozen<list<text>>", "regular"), ("fm", "frozen<map<int, int>>", "regular")])  # fmt: skip
    m = await setup(sink, ch_database, sch)
    k1, k2 = {"pk": 1, "ck": 1}, {"pk": 2, "ck": 1}
    await sink.write(
        m, [ev(Op.UPDATE, k1, values={"v": "a", "fl": []}), ev(Op.UPDATE, k2, values={"v": "b"})]
    )
    await sink.write(
        m, [ev(Op.UPDATE, k1, deleted=frozenset({"v"})), ev(Op.UPDATE, k2, deleted=frozenset({"v"}))]
    )
    got = await rows(ch, ch_database)
    assert [(r["pk"], r["v"], r["fl"], r["_cdc_empty"]) for r in got] == [(1, None, [], ["fl"])]
    # Replacing the empty value by null (or a row delete) ends the row; in one batch too.
    await sink.write(m, [ev(Op.UPDATE, k2, values={"fm": {}}), ev(Op.UPDATE, k1, deleted=frozenset({"fl"}))])
    got = await rows(ch, ch_database)
    assert [(r["pk"], r["fm"], r["_cdc_empty"]) for r in got] == [(2, {}, ["fm"])]
    await sink.write(
        m, [ev(Op.UPDATE, k2, values={"fm": {1: 2}}), ev(Op.UPDATE, k2, deleted=frozenset({"fm"}))]
    )
    assert await rows(ch, ch_database) == []


async def test_collection_deltas_are_applied_exactly(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    sch = schema([("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("s", "set<text>", "regular"),
                  ("mp", "map<int, text>", "regular"), ("u", "ut", "regular")])  # fmt: skip
    m = await setup(sink, ch_database, sch)
    k1, k2, k3, k0 = (uuid.uuid1() for _ in range(4))
    key = {"pk": 1}
    await sink.write(m, [ev(Op.INSERT, key, values={"l": {k1: 1, k2: 2}, "s": ["b", "a"], "mp": {1: "x"}, "u": {"a": 1}},
                            deleted=frozenset({"l", "s", "mp", "u"}))])  # fmt: skip
    # Separate batches: each delta merges with what ClickHouse already holds.
    await sink.write(m, [ev(Op.UPDATE, key, values={"l": {k3: 3}})])  # append
    prepend = uuid.UUID(int=(k0.int & ~(0xFFFFFFFFFFFFFFF << 68)) | (1 << 76) | (k0.int & ((1 << 64) - 1)))
    await sink.write(
        m, [ev(Op.UPDATE, key, deleted_elements={"l": [k2]}, values={"s": ["c"], "mp": {2: "y"}})]
    )
    await sink.write(
        m,
        [ev(Op.UPDATE, key, deleted_elements={"s": ["a"], "mp": [1], "u": ["a"]}, values={"u": {"b": "B"}})],
    )
    (row,) = await rows(ch, ch_database)
    assert row["l"] == [1, 3] and row["_cdc_keys_l"] == [k1, k3]
    assert row["s"] == ["b", "c"]
    assert row["mp"] == {2: "y"}
    assert row["u"] == (None, "B")
    # Overwrite = clear + add, in the same event.
    await sink.write(m, [ev(Op.UPDATE, key, values={"l": {prepend: 9}}, deleted=frozenset({"l"}))])
    (row,) = await rows(ch, ch_database)
    assert row["l"] == [9] and row["_cdc_keys_l"] == [prepend]
    # A prepended cell (older timeuuid) sorts first.
    await sink.write(m, [ev(Op.UPDATE, key, values={"l": {uuid.uuid1(): 10}})])
    (row,) = await rows(ch, ch_database)
    assert row["l"] == [9, 10]
    # Removing every element makes the collection null (empty), like CQL.
    await sink.write(m, [ev(Op.UPDATE, key, deleted_elements={"s": ["b", "c"]})])
    (row,) = await rows(ch, ch_database)
    assert row["s"] == []


async def test_replaying_collection_deltas_is_idempotent(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    sch = schema(
        [("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("s", "set<int>", "regular")]
    )
    m = await setup(sink, ch_database, sch)
    k1, k2 = uuid.uuid1(), uuid.uuid1()
    batch = [
        ev(Op.INSERT, {"pk": 1}, values={"l": {k1: 1}, "s": [1]}),
        ev(Op.UPDATE, {"pk": 1}, values={"l": {k2: 2}, "s": [2]}),
    ]
    assert (await sink.write(m, batch)).applied == 2
    again = await sink.write(m, batch)
    assert again.skipped_stale == 2 and again.applied == 0
    (row,) = await rows(ch, ch_database)
    assert row["l"] == [1, 2] and row["s"] == [1, 2]


async def test_many_changes_to_one_key_in_one_batch_end_in_the_final_state(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE))
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
    got = [(r["ck"], r["v1"], r["v2"], r["_cdc_row_marker"]) for r in await rows(ch, ch_database)]
    assert got == [(1, "b", 3, 0), (2, None, 5, 0)]
    assert await count(ch, ch_database) == 2  # one physical row per key per batch


async def test_version_guard_skips_older_events(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE))
    k = {"pk": 1, "ck": 1}
    await sink.write(m, [ev(Op.INSERT, k, wt=2000, values={"v1": "new"})])
    out = await sink.write(m, [ev(Op.UPDATE, k, wt=1000, values={"v1": "old"})])
    assert out.skipped_stale == 1 and out.applied == 0
    out = await sink.write(m, [ev(Op.ROW_DELETE, k, wt=1500)])  # an older delete does not remove newer data
    assert out.skipped_stale == 1
    assert [(r["v1"], r["_cdc_version"]) for r in await rows(ch, ch_database)] == [("new", 2000)]
    # After a delete, an older write (a replay) does not bring the row back.
    await sink.write(m, [ev(Op.ROW_DELETE, k, wt=3000)])
    out = await sink.write(m, [ev(Op.INSERT, k, wt=2500, values={"v1": "older"})])
    assert out.skipped_stale == 1 and await rows(ch, ch_database) == []


@pytest.mark.parametrize("strategy", ["hard", "soft", "tombstone"])
async def test_row_partition_and_range_deletes(
    sink: ClickHouseSink, ch: Any, ch_database: str, strategy: str
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("c1", "int", "clustering"), ("c2", "int", "clustering"),
                  ("v", "int", "regular")], order=("asc", "desc"))  # fmt: skip
    m = await setup(sink, ch_database, sch, strategy)
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
    live_where = "WHERE _cdc_deleted = 0" if strategy == "soft" else ""
    live = [(r["pk"], r["c1"], r["c2"]) for r in await rows(ch, ch_database, where=live_where)]
    assert sorted(live) == [(1, 0, 1), (1, 0, 2), (1, 1, 2), (1, 2, 0), (1, 2, 1), (1, 2, 2)]
    if strategy == "soft":
        dead = await rows(ch, ch_database, where="WHERE _cdc_deleted = 1")
        assert len(dead) == 12 and all(r["_cdc_deleted_at"] is not None and r["v"] is not None for r in dead)
    if strategy == "tombstone":
        before = await count(ch, ch_database, "t_history")
        await sink.write(m, deletes)  # a replay adds no history rows
        assert await count(ch, ch_database, "t_history") == before == 4
        hist = await ch.query(
            f"SELECT _cdc_op, pk, c1, c2 FROM `{ch_database}`.`t_history` FINAL ORDER BY _cdc_write_time"
        )
        assert [tuple(h) for h in hist.result_rows] == [
            ("row_delete", 1, 0, 0), ("range_delete", 1, None, None), ("range_delete", 1, None, None),
            ("partition_delete", 2, None, None),
        ]  # fmt: skip


async def test_rows_written_and_deleted_in_one_batch(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("v", "int", "regular")])
    m = await setup(sink, ch_database, sch)
    await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 0}, values={"v": 0})])
    await sink.write(
        m,
        [
            ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": 1}),  # new in this batch
            ev(
                Op.RANGE_DELETE,
                {"pk": 1},
                range=RangeBound(start=(), start_inclusive=True, end=(1,), end_inclusive=True),
            ),
            ev(Op.INSERT, {"pk": 1, "ck": 2}, values={"v": 2}),  # after the range delete: survives
            ev(
                Op.UPDATE, {"pk": 1, "ck": 0}, values={"v": 9}
            ),  # written again after its delete: starts empty
        ],
    )
    assert [(r["ck"], r["v"], r["_cdc_row_marker"]) for r in await rows(ch, ch_database)] == [
        (0, 9, 0),
        (2, 2, 1),
    ]


async def test_soft_deleted_row_is_revived_empty(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE), "soft")
    k = {"pk": 1, "ck": 1}
    await sink.write(m, [ev(Op.INSERT, k, values={"v1": "a", "v2": 1})])
    await sink.write(m, [ev(Op.ROW_DELETE, k)])
    (row,) = await rows(ch, ch_database)
    assert (row["v1"], row["_cdc_deleted"]) == ("a", 1) and row["_cdc_deleted_at"] is not None
    await sink.write(m, [ev(Op.UPDATE, k, values={"v2": 2})])
    (row,) = await rows(ch, ch_database)
    assert (row["v1"], row["v2"], row["_cdc_deleted"], row["_cdc_deleted_at"]) == (None, 2, 0, None)


async def test_static_columns_live_in_a_side_table(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    sch = schema(
        [
            ("pk", "int", "partition_key"),
            ("ck", "int", "clustering"),
            ("s", "text", "static"),
            ("v", "int", "regular"),
        ]
    )
    m = await setup(sink, ch_database, sch)
    await sink.write(
        m,
        [
            ev(Op.UPDATE, {"pk": 1}, static=True, values={"s": "S"}),
            ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": 1}),
        ],
    )
    assert [(r["pk"], r["s"]) for r in await rows(ch, ch_database, "t_static")] == [(1, "S")]
    assert "s" not in (await rows(ch, ch_database))[0]
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"pk": 1})])
    assert await rows(ch, ch_database, "t_static") == [] and await rows(ch, ch_database) == []


async def test_a_resent_batch_is_not_stored_twice(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    m = await setup(sink, ch_database, schema(SIMPLE), "tombstone")
    batch = [ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v1": str(i)}) for i in range(20)]
    batch.append(ev(Op.ROW_DELETE, {"pk": 3, "ck": 0}))
    await sink.write(m, batch)
    physical = await count(ch, ch_database), await count(ch, ch_database, "t_history")
    # A crash after the insert, before the checkpoint: the same batch comes again.
    await sink.write(m, batch)
    assert (await count(ch, ch_database), await count(ch, ch_database, "t_history")) == physical
    # Even when the version guard is bypassed (the retry of an insert whose answer was lost),
    # the same block with the same insert_deduplication_token is dropped by ClickHouse.
    from cdcd.sinks.clickhouse.fold import BatchState, prepare

    table = sink._tables[(m.source, m.target)]
    state = BatchState(table.codec, m.delete)
    for p in prepare(table.codec, batch)[0]:
        state.apply(p)
    blocks = sink._blocks(table, state, batch)
    from cdcd.sinks.clickhouse.wire import batch_token as _batch_token

    token = _batch_token(m, batch)
    for block in blocks:
        await sink._insert(block, f"{token}:{block.part}")
    assert (await count(ch, ch_database), await count(ch, ch_database, "t_history")) == physical
    # Another token does store the block again; FINAL still shows each row once.
    main = next(b for b in blocks if b.part == "main")
    await sink._insert(main, "another-token")
    assert await count(ch, ch_database) == physical[0] + main.nrows
    assert len(await rows(ch, ch_database)) == 19


async def test_a_retried_batch_of_blind_and_read_back_keys_is_not_stored_twice(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    """The answer to the first insert was lost. The retry reads back what it stored (its partial
    update is now stale) but writes its full-row INSERT blind again: that smaller block still
    carries the batch's token, so ClickHouse drops it (found by tests/e2e/test_destination_outage_e2e.py)."""
    m = await setup(sink, ch_database, schema(SIMPLE))
    await ch.command(f"SYSTEM STOP MERGES `{ch_database}`.`t`")  # a row stored twice stays visible
    await sink.write(m, [ev(Op.INSERT, {"pk": 2, "ck": 0}, values={"v1": "b", "v2": 1})])
    batch = [
        ev(Op.INSERT, {"pk": 1, "ck": 0}, values={"v1": "a", "v2": 1}),  # full row: not read back
        ev(Op.UPDATE, {"pk": 2, "ck": 0}, values={"v2": 2}),  # partial: read back
    ]
    assert (await sink.write(m, batch)).applied == 2
    physical = await count(ch, ch_database)
    retry = await sink.write(m, batch)
    # Every key is read back now (per-event staleness reporting): both events are replays.
    assert (retry.applied, retry.skipped_stale) == (0, 2)
    assert {x.reason for x in retry.skipped} == {"duplicate"}
    assert await count(ch, ch_database) == physical
    assert [(r["pk"], r["v1"], r["v2"]) for r in await rows(ch, ch_database)] == [(1, "a", 1), (2, "b", 2)]


async def test_bad_rows_are_isolated_and_nothing_is_stored(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    sch = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("f", "float", "regular"),
                  ("n", "varint", "regular")])  # fmt: skip
    m = await setup(sink, ch_database, sch)
    batch = [ev(Op.INSERT, {"pk": i}, values={"v": f"row {i}"}) for i in range(100)]
    batch[17] = ev(Op.INSERT, {"pk": 17}, values={"f": 1e300})  # beyond Float32
    batch[42] = ev(Op.INSERT, {"pk": 42}, values={"n": 2**300})  # beyond Int256
    batch[50] = ev(Op.INSERT, {"pk": 50}, values={"nope": 1})  # not a column
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert sorted(err.value.errors) == [17, 42, 50]
    assert "Float32" in err.value.errors[17] and "Int256" in err.value.errors[42]
    assert await count(ch, ch_database) == 0
    good = [e for i, e in enumerate(batch) if i not in (17, 42, 50)]
    assert (await sink.write(m, good)).applied == 97
    assert (await sink.write(m, good)).applied == 0  # the retry of the good rows applies nothing twice
    assert await count(ch, ch_database) == 97


async def test_server_side_bad_data_is_bisected_without_storing(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    """A value only the server refuses: a CHECK constraint added to the target table."""
    m = await setup(sink, ch_database, schema(SIMPLE))
    await ch.command(f"ALTER TABLE `{ch_database}`.`t` ADD CONSTRAINT small CHECK v2 IS NULL OR v2 < 1000")
    batch = [ev(Op.INSERT, {"pk": i, "ck": 0}, values={"v2": i}) for i in range(40)]
    batch[29] = ev(Op.INSERT, {"pk": 29, "ck": 0}, values={"v2": 5000})
    with pytest.raises(BadRows) as err:
        await sink.write(m, batch)
    assert list(err.value.errors) == [29]
    assert await count(ch, ch_database) == 0
    res = await ch.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": ch_database}
    )
    assert sorted(r[0] for r in res.result_rows) == ["cdcd_offsets", "t"]  # the probe table is gone


async def test_unreachable_server_is_sink_unavailable(ch_database: str) -> None:
    s = ClickHouseSink("ch", Config("http://127.0.0.1:1"))
    with pytest.raises(SinkUnavailable):
        await s.connect()
        await s.healthcheck()
    await s.aclose()


async def test_identifiers_are_quoted_and_validated(sink: ClickHouseSink, ch: Any, ch_database: str) -> None:
    evil = "x`; DROP TABLE y; --\\"
    sch = schema([("pk", "int", "partition_key"), (evil, "text", "regular")])
    m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t`q.x", delete="hard")
    await sink.ensure_table(m, sch)
    await sink.write(m, [ev(Op.INSERT, {"pk": 1}, values={evil: "v"})])
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, values={evil: "w"})])
    res = await ch.query(
        f"SELECT `{evil.replace(chr(92), chr(92) * 2).replace('`', chr(92) + '`')}` FROM `{ch_database}`.`t\\`q.x` FINAL"
    )
    assert res.result_rows == [("w",)]
    with pytest.raises(SchemaMismatch):
        await sink.ensure_table(
            TableMapping(source="ks.t", target_schema=ch_database, target_table="x\n"), schema(SIMPLE)
        )


async def test_existing_table_must_match_when_create_is_off(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t", create=False)
    with pytest.raises(SchemaMismatch, match="does not exist"):
        await sink.ensure_table(m, schema(SIMPLE))
    await ch.command(
        f"CREATE TABLE `{ch_database}`.`t` (pk Int32, ck Int32, v1 Nullable(String)) ENGINE = MergeTree ORDER BY (pk, ck)"
    )
    with pytest.raises(SchemaMismatch, match=r"source column ks\.t\.v2 has no column in ClickHouse table"):
        await sink.ensure_table(m, schema(SIMPLE))
    # With create on, missing columns are not added either: cdcd did not create the table.
    with pytest.raises(UnmanagedTable, match=r"ks\.t\.v2 has no column .*a table cdcd did not create"):
        await sink.ensure_table(
            TableMapping(source="ks.t", target_schema=ch_database, target_table="t"), schema(SIMPLE)
        )
    await ch.command(f"ALTER TABLE `{ch_database}`.`t` ADD COLUMN v2 Nullable(Int32)")
    await sink.ensure_table(
        TableMapping(source="ks.t", target_schema=ch_database, target_table="t"), schema(SIMPLE)
    )
    # A table cdcd created gets a new source column.
    created = TableMapping(source="ks.t", target_schema=ch_database, target_table="own")
    await sink.ensure_table(created, schema(SIMPLE[:3]))
    await sink.ensure_table(created, schema(SIMPLE))
    res = await ch.query(
        f"SELECT name FROM system.columns WHERE database = '{ch_database}' AND table = 'own'"
    )
    assert "v2" in {r[0] for r in res.result_rows}
    bad = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("v1", "int", "regular")])
    with pytest.raises(SchemaMismatch, match="expected"):
        await sink.ensure_table(TableMapping(source="ks.t", target_schema=ch_database, target_table="t"), bad)


@pytest.mark.parametrize("key_type", ["uuid", "bigint", "varint"])
async def test_integer_and_uuid_keys_are_read_back(
    sink: ClickHouseSink, ch: Any, ch_database: str, key_type: str
) -> None:
    sch = schema([("pk", key_type, "partition_key"), ("ck", "int", "clustering"), ("v", "int", "regular"),
                  ("w", "int", "regular")])  # fmt: skip
    m = await setup(sink, ch_database, sch)
    keys = [uuid.uuid4() for _ in range(3)] if key_type == "uuid" else [-(2**63), 0, 2**63 - 1]
    await sink.write(
        m, [ev(Op.INSERT, {"pk": k, "ck": c}, values={"v": 1, "w": 1}) for k in keys for c in (1, 2)]
    )
    await sink.write(m, [ev(Op.UPDATE, {"pk": k, "ck": 1}, values={"v": 2}) for k in keys])
    await sink.write(m, [ev(Op.PARTITION_DELETE, {"pk": keys[0]})])
    got = sorted((r["v"], r["w"]) for r in await rows(ch, ch_database))
    assert got == [(1, 1), (1, 1), (2, 1), (2, 1)]


@pytest.mark.parametrize("strategy", ["hard", "soft"])
async def test_full_row_inserts_are_not_read_back_and_stay_correct(
    sink: ClickHouseSink, ch: Any, ch_database: str, strategy: str
) -> None:
    """INSERTs that set every column of new keys skip the fold; a replayed older one is reported
    stale (every key is read back); a delete after such an INSERT in the same batch still hides the
    stored row."""
    sch = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("l", "list<int>", "regular")])
    m = await setup(sink, ch_database, sch, strategy)
    k1, k2 = uuid.uuid1(), uuid.uuid1()
    full = {"v": "a", "l": {k1: 1, k2: 2}}
    first = [ev(Op.INSERT, {"pk": i}, values=full, deleted=frozenset({"l"})) for i in range(3)]
    out = await sink.write(m, first)  # the bulk path: columns built directly
    assert out == type(out)(applied=3, skipped_stale=0)
    newer = ev(Op.UPDATE, {"pk": 0}, values={"v": "newer"})
    await sink.write(m, [newer])
    # A replay of an older full INSERT (another batch, another token) does not show.
    out = await sink.write(m, [first[0]])
    assert (out.applied, [(x.reason, x.row_write_time_us) for x in out.skipped]) == (
        0,
        [("stale", newer.write_time_us)],
    )
    # A full INSERT then a delete of a stored row in one batch: the stored row is hidden.
    later = [
        ev(Op.INSERT, {"pk": 1}, values={"v": "b"}, deleted=frozenset({"l"})),
        ev(Op.ROW_DELETE, {"pk": 1}),
        ev(Op.UPDATE, {"pk": 2}, values={"l": {uuid.uuid1(): 3}}),  # read back: an append
    ]
    await sink.write(m, later)
    got = {r["pk"]: (r["v"], r["l"], r["_cdc_deleted"]) for r in await rows(ch, ch_database)}
    if strategy == "hard":
        assert got == {0: ("newer", [1, 2], 0), 2: ("a", [1, 2, 3], 0)}
    else:
        assert got == {0: ("newer", [1, 2], 0), 1: ("b", [], 1), 2: ("a", [1, 2, 3], 0)}


async def test_text_keys_with_special_characters_are_read_back(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    sch = schema([("p", "text", "partition_key"), ("c", "uuid", "clustering"), ("v", "int", "regular"),
                  ("w", "int", "regular")])  # fmt: skip
    m = await setup(sink, ch_database, sch)
    texts = ["it's", "back\\slash", "`tick`", "tab\there", "new\nline", "{x:String}", "zażółć", ""]
    u = uuid.UUID(int=7)
    await sink.write(m, [ev(Op.INSERT, {"p": t, "c": u}, values={"v": 1, "w": 1}) for t in texts])
    await sink.write(m, [ev(Op.UPDATE, {"p": t, "c": u}, values={"v": 2}) for t in texts])  # read back w
    got = {r["p"]: (r["v"], r["w"]) for r in await rows(ch, ch_database)}
    assert got == dict.fromkeys(texts, (2, 1))


async def test_a_destination_outage_is_sink_unavailable_and_the_retry_applies_once(tmp_path: Any) -> None:
    """ClickHouse goes down between two batches and comes back on the same data directory: the
    write in between raises SinkUnavailable (retriable), and the retried batch lands exactly once."""
    import asyncio
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start() -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "tests.clickhouse_server",
            "--port",
            str(port),
            "--path",
            str(tmp_path / "d"),
        ]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def until_up(sink: ClickHouseSink) -> None:
        async with asyncio.timeout(60):
            while True:
                try:
                    await sink.healthcheck()
                    return
                except SinkUnavailable:
                    await asyncio.sleep(0.2)

    proc = start()
    sink = ClickHouseSink("ch", Config(f"http://127.0.0.1:{port}"))
    try:
        await until_up(sink)
        m = await setup(sink, "outage", schema(SIMPLE))
        await sink.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v1": "a", "v2": 1})])
        proc.terminate()
        proc.wait(timeout=30)
        batch = [
            ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"v2": 2}),
            ev(Op.INSERT, {"pk": 2, "ck": 1}, values={"v1": "b"}),
        ]
        with pytest.raises(SinkUnavailable):
            await sink.write(m, batch)
        proc = start()
        await until_up(sink)
        assert (await sink.write(m, batch)).applied == 2
        assert (await sink.write(m, batch)).skipped_stale == 2  # the pipeline's retry after a lost answer
        res = await sink._client.query("SELECT pk, v1, v2 FROM outage.t FINAL ORDER BY pk")
        assert [tuple(r) for r in res.result_rows] == [(1, "a", 2), (2, "b", None)]
    finally:
        await sink.aclose()
        proc.terminate()
        proc.wait(timeout=30)
