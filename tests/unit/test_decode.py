"""Decoding CDC log groups (rows built by hand from scylla-cdc.md §2.3 / §3.2 worked examples)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cdcd.events import Op, RangeBound, timeuuid_to_micros
from cdcd.schema import CdcOptions, Column, CqlType, TableSchema
from cdcd.scylla.decode import LogDecoder, UndecodableGroup, log_column_names

STREAM = bytes.fromhex("7ffe0c687fcce86e0783343730000001")
# A version-1 timeuuid from the docs (2020-03-23), random low bits.
TIME = uuid.UUID("c3b851fe-6d0c-11ea-3f9b-422e11ed8da0")
GEN = 1_584_000_000_000
INT = CqlType("int")


def schema(
    *cols: tuple[str, CqlType, str], cdc: CdcOptions | None = None, ks: str = "ks", name: str = "t"
) -> TableSchema:
    pos: dict[str, int] = {}
    out = []
    for n, t, kind in cols:
        out.append(Column(n, t, kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        pos[kind] = pos.get(kind, 0) + 1
    return TableSchema(ks, name, tuple(out), cdc=cdc or CdcOptions(enabled=True))


def rows(*specs: dict[str, Any], time: uuid.UUID = TIME) -> list[dict[str, Any]]:
    """Log rows: each spec holds op and column values; seq/stream/time/end_of_batch are filled in."""
    out = []
    for i, spec in enumerate(specs):
        r = {
            "cdc$stream_id": STREAM,
            "cdc$time": time,
            "cdc$batch_seq_no": i,
            "cdc$ttl": None,
            "cdc$end_of_batch": True if i == len(specs) - 1 else None,
        }
        r["cdc$operation"] = spec.pop("op")
        r.update(spec)
        out.append(r)
    return out


PK_CK_V1_V2 = schema(
    ("pk", INT, "partition_key"), ("ck", INT, "clustering"), ("v1", INT, "regular"), ("v2", INT, "regular")
)


def decode(sch: TableSchema, rs: list[dict[str, Any]]) -> list[Any]:
    return LogDecoder(sch).decode(rs, generation=GEN)


def test_update_insert_and_column_delete() -> None:
    [ev] = decode(PK_CK_V1_V2, rows({"op": 1, "pk": 0, "ck": 0, "v1": 0}))
    assert ev.op is Op.UPDATE
    assert ev.key == {"pk": 0, "ck": 0}
    assert ev.values == {"v1": 0}
    assert ev.deleted == frozenset()
    assert ev.static is False
    assert ev.pos.stream_id == STREAM and ev.pos.time == TIME and ev.pos.generation == GEN
    assert ev.batch_seq == 0
    assert ev.write_time_us == timeuuid_to_micros(TIME)
    assert ev.table == "ks.t"

    [ev] = decode(PK_CK_V1_V2, rows({"op": 1, "pk": 0, "ck": 0, "cdc$deleted_v2": True}))
    assert ev.values == {} and ev.deleted == frozenset({"v2"})

    [ev] = decode(PK_CK_V1_V2, rows({"op": 2, "pk": 0, "ck": 0, "v1": 0}))
    assert ev.op is Op.INSERT and ev.values == {"v1": 0}

    [ev] = decode(PK_CK_V1_V2, rows({"op": 2, "pk": 0, "ck": 0}))  # row marker only
    assert ev.op is Op.INSERT and ev.values == {} and ev.deleted == frozenset()


def test_static_and_clustered_parts_of_one_write() -> None:
    sch = schema(
        ("pk", INT, "partition_key"), ("ck", INT, "clustering"), ("s", INT, "static"), ("c", INT, "regular")
    )
    static, row = decode(sch, rows({"op": 1, "pk": 0, "s": 0}, {"op": 2, "pk": 0, "ck": 0, "c": 0}))
    assert static.static is True and static.op is Op.UPDATE
    assert static.key == {"pk": 0} and static.values == {"s": 0}
    assert row.static is False and row.op is Op.INSERT
    assert row.key == {"pk": 0, "ck": 0} and row.values == {"c": 0}
    assert (static.batch_seq, row.batch_seq) == (0, 1)
    assert row.pos == static.pos


def test_row_and_partition_delete() -> None:
    [ev] = decode(PK_CK_V1_V2, rows({"op": 3, "pk": 0, "ck": 0}))
    assert ev.op is Op.ROW_DELETE and ev.key == {"pk": 0, "ck": 0}
    [ev] = decode(PK_CK_V1_V2, rows({"op": 4, "pk": 0}))
    assert ev.op is Op.PARTITION_DELETE and ev.key == {"pk": 0}


def test_range_deletes_become_one_event_per_bound_pair() -> None:
    [ev] = decode(PK_CK_V1_V2, rows({"op": 6, "pk": 0, "ck": 0}, {"op": 7, "pk": 0, "ck": 2}))
    assert ev.op is Op.RANGE_DELETE and ev.key == {"pk": 0}
    assert ev.range == RangeBound(start=(0,), start_inclusive=False, end=(2,), end_inclusive=True)
    [ev] = decode(PK_CK_V1_V2, rows({"op": 5, "pk": 0}, {"op": 8, "pk": 0, "ck": 3}))
    assert ev.range == RangeBound(start=(), start_inclusive=True, end=(3,), end_inclusive=False)

    multi = schema(
        ("pk", INT, "partition_key"),
        ("ck1", INT, "clustering"),
        ("ck2", INT, "clustering"),
        ("ck3", INT, "clustering"),
        ("v", INT, "regular"),
    )
    first, second = decode(
        multi,
        rows(
            {"op": 6, "pk": 0, "ck1": 0, "ck2": 0},
            {"op": 8, "pk": 0, "ck1": 0, "ck2": 3},
            {"op": 5, "pk": 0, "ck1": 1},
            {"op": 7, "pk": 0},
        ),
    )
    assert first.range == RangeBound(start=(0, 0), start_inclusive=False, end=(0, 3), end_inclusive=False)
    assert second.range == RangeBound(start=(1,), start_inclusive=True, end=(), end_inclusive=True)
    assert (first.batch_seq, second.batch_seq) == (0, 2)


def test_ttl_split_rows_keep_their_own_ttl() -> None:
    sch = schema(
        ("pk", INT, "partition_key"), ("ck", INT, "clustering"), ("a", INT, "regular"), ("b", INT, "regular")
    )
    dead, live = decode(
        sch,
        rows(
            {"op": 1, "pk": 0, "ck": 0, "cdc$deleted_b": True},
            {"op": 1, "pk": 0, "ck": 0, "a": 0, "cdc$ttl": 5},
        ),
    )
    assert dead.ttl is None and dead.deleted == frozenset({"b"}) and dead.values == {}
    assert live.ttl == 5 and live.values == {"a": 0} and live.deleted == frozenset()


MAP = CqlType("map", (INT, CqlType("text")))


def test_non_frozen_map_deltas() -> None:
    sch = schema(("pk", INT, "partition_key"), ("ck", INT, "clustering"), ("v", MAP, "regular"))
    assert "cdc$deleted_elements_v" in log_column_names(sch)
    [add] = decode(sch, rows({"op": 1, "pk": 0, "ck": 0, "v": {1: "v1", 2: "v2"}}))
    assert add.values == {"v": {1: "v1", 2: "v2"}} and add.deleted == frozenset()
    [rem] = decode(sch, rows({"op": 1, "pk": 0, "ck": 0, "cdc$deleted_elements_v": {1, 2, 3}}))
    assert rem.values == {} and rem.deleted_elements == {"v": [1, 2, 3]}
    [clear] = decode(sch, rows({"op": 1, "pk": 0, "ck": 0, "cdc$deleted_v": True}))
    assert clear.values == {} and clear.deleted == frozenset({"v"})
    [over] = decode(sch, rows({"op": 2, "pk": 0, "ck": 0, "v": {1: "v1"}, "cdc$deleted_v": True}))
    assert over.values == {"v": {1: "v1"}} and over.deleted == frozenset({"v"})


def test_non_frozen_set_and_list_deltas() -> None:
    lst = CqlType("list", (INT,))
    st = CqlType("set", (INT,))
    sch = schema(("pk", INT, "partition_key"), ("s", st, "regular"), ("l", lst, "regular"))
    k1 = uuid.UUID("db3214f0-2fea-11eb-af55-000000000001")
    k2 = uuid.UUID("db3214f1-2fea-11eb-af55-000000000001")
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "s": [1, 2], "l": {k2: 2, k1: 1}}))
    assert ev.values["s"] == [1, 2]
    assert ev.values["l"] == {k1: 1, k2: 2}
    assert list(ev.values["l"]) == [k1, k2]  # timeuuid order = list order
    [ev] = decode(
        sch, rows({"op": 1, "pk": 0, "cdc$deleted_elements_l": [k2, k1], "cdc$deleted_elements_s": [3]})
    )
    assert ev.deleted_elements == {"l": [k1, k2], "s": [3]}
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "l": {k1: 1, k2: 2}, "cdc$deleted_l": True}))
    assert ev.deleted == frozenset({"l"}) and ev.values == {"l": {k1: 1, k2: 2}}


def _udt() -> CqlType:
    from cdcd.schema import UdtDef

    return CqlType("udt", udt=UdtDef("ks", "ut", ("a", "b", "c"), (INT, INT, INT)))


def test_non_frozen_udt_deltas_use_field_names() -> None:
    from collections import namedtuple

    ut = namedtuple("ut", ["a", "b", "c"])  # what the driver returns for a UDT
    sch = schema(("pk", INT, "partition_key"), ("v", _udt(), "regular"))
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "v": ut(0, 1, None)}))
    assert ev.values == {"v": {"a": 0, "b": 1}}
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "v": ut(None, None, None), "cdc$deleted_elements_v": {0, 1}}))
    assert ev.values == {} and ev.deleted_elements == {"v": ["a", "b"]}
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "v": ut(42, None, None), "cdc$deleted_elements_v": {2}}))
    assert ev.values == {"v": {"a": 42}} and ev.deleted_elements == {"v": ["c"]}
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "v": ut(1, 2, None), "cdc$deleted_v": True}))
    assert ev.values == {"v": {"a": 1, "b": 2}} and ev.deleted == frozenset({"v"})
    with pytest.raises(UndecodableGroup, match="deleted field index 7"):
        decode(sch, rows({"op": 1, "pk": 0, "cdc$deleted_elements_v": {7}}))


def test_frozen_udt_is_atomic_and_complete() -> None:
    frozen = CqlType("udt", frozen=True, udt=_udt().udt)
    sch = schema(("pk", INT, "partition_key"), ("v", frozen, "regular"))
    [ev] = decode(sch, rows({"op": 1, "pk": 0, "v": (1, None, 3)}))
    assert ev.values == {"v": {"a": 1, "b": None, "c": 3}}


def test_images_are_matched_by_primary_key_not_adjacency() -> None:
    sch = schema(
        ("pk", INT, "partition_key"),
        ("ck", INT, "clustering"),
        ("v1", INT, "regular"),
        ("v2", INT, "regular"),
        cdc=CdcOptions(enabled=True, preimage="true", postimage=True),
    )
    # pre(A), pre(B), delta(A), delta(B), post(A), post(B) (§2.3 "Precise grouping rules")
    evs = decode(
        sch,
        rows(
            {"op": 0, "pk": 0, "ck": 1, "v1": 10},
            {"op": 0, "pk": 0, "ck": 2, "v1": 20, "cdc$deleted_v2": True},
            {"op": 1, "pk": 0, "ck": 1, "v1": 11},
            {"op": 1, "pk": 0, "ck": 2, "v1": 21, "v2": 22},
            {"op": 9, "pk": 0, "ck": 1, "v1": 11, "v2": 5},
            {"op": 9, "pk": 0, "ck": 2, "v1": 21, "v2": 22},
        ),
    )
    a, b = evs
    assert a.key == {"pk": 0, "ck": 1} and b.key == {"pk": 0, "ck": 2}
    assert a.preimage == {"pk": 0, "ck": 1, "v1": 10}  # 'preimage': true -> changed columns only
    assert b.preimage == {"pk": 0, "ck": 2, "v1": 20, "v2": None}  # cdc$deleted_v2 = null before
    assert a.postimage == {"pk": 0, "ck": 1, "v1": 11, "v2": 5}
    assert b.postimage == {"pk": 0, "ck": 2, "v1": 21, "v2": 22}
    assert (a.batch_seq, b.batch_seq) == (2, 3)


def test_full_preimage_and_row_delete_preimage() -> None:
    sch = schema(
        ("pk", INT, "partition_key"),
        ("ck", INT, "clustering"),
        ("v1", INT, "regular"),
        ("v2", INT, "regular"),
        cdc=CdcOptions(enabled=True, preimage="full", postimage=True),
    )
    [ins] = decode(
        sch,
        rows(
            {"op": 0, "pk": 0, "ck": 0, "v1": 0},
            {"op": 2, "pk": 0, "ck": 0, "v2": 0},
            {"op": 9, "pk": 0, "ck": 0, "v1": 0, "v2": 0},
        ),
    )
    assert ins.op is Op.INSERT and ins.values == {"v2": 0}
    assert ins.preimage == {"pk": 0, "ck": 0, "v1": 0, "v2": None}
    assert ins.postimage == {"pk": 0, "ck": 0, "v1": 0, "v2": 0}
    [dele] = decode(sch, rows({"op": 0, "pk": 0, "ck": 0, "v1": 0, "v2": 0}, {"op": 3, "pk": 0, "ck": 0}))
    assert dele.op is Op.ROW_DELETE and dele.preimage == {"pk": 0, "ck": 0, "v1": 0, "v2": 0}
    assert dele.postimage is None


def test_static_images_go_to_the_static_change() -> None:
    sch = schema(
        ("pk", INT, "partition_key"),
        ("ck", INT, "clustering"),
        ("vs", INT, "static"),
        ("vc", INT, "regular"),
        cdc=CdcOptions(enabled=True, preimage="true"),
    )
    # test/cql/cdc_static_and_clustered_rows_test.result
    st, row = decode(
        sch,
        rows(
            {"op": 0, "pk": 0, "vs": 2},
            {"op": 0, "pk": 0, "ck": 0, "vc": 2},
            {"op": 1, "pk": 0, "vs": 3},
            {"op": 1, "pk": 0, "ck": 0, "vc": 3},
        ),
    )
    assert st.static and st.preimage == {"pk": 0, "vs": 2} and st.values == {"vs": 3}
    assert not row.static and row.preimage == {"pk": 0, "ck": 0, "vc": 2} and row.values == {"vc": 3}


def test_preimage_and_postimage_of_a_key_with_two_deltas() -> None:
    sch = schema(
        ("pk", INT, "partition_key"),
        ("b", MAP, "regular"),
        cdc=CdcOptions(enabled=True, preimage="true", postimage=True),
    )
    # INSERT ... USING TTL 5 of a map column: insert, clear, add (all at one cdc$time)
    ins, clear, add = decode(
        sch,
        rows(
            {"op": 0, "pk": 0, "b": {7: "x"}},
            {"op": 2, "pk": 0, "cdc$ttl": 5},
            {"op": 1, "pk": 0, "cdc$deleted_b": True},
            {"op": 1, "pk": 0, "b": {0: "y"}, "cdc$ttl": 5},
            {"op": 9, "pk": 0, "b": {0: "y"}},
        ),
    )
    assert ins.preimage == {"pk": 0, "b": {7: "x"}} and ins.postimage is None
    assert clear.preimage is None and clear.postimage is None and clear.deleted == frozenset({"b"})
    assert add.postimage == {"pk": 0, "b": {0: "y"}} and add.values == {"b": {0: "y"}}


def test_partition_delete_without_clustering_key_gets_its_preimage() -> None:
    sch = schema(
        ("pk", INT, "partition_key"), ("v", INT, "regular"), cdc=CdcOptions(enabled=True, preimage="true")
    )
    [ev] = decode(sch, rows({"op": 0, "pk": 1, "v": 5}, {"op": 4, "pk": 1}))
    assert ev.op is Op.PARTITION_DELETE and ev.preimage == {"pk": 1, "v": 5}


def test_service_deletes_are_deletes() -> None:
    [ev] = decode(PK_CK_V1_V2, rows({"op": -3, "pk": 0, "ck": 1}))
    assert ev.op is Op.ROW_DELETE and ev.key == {"pk": 0, "ck": 1}
    sch = schema(("pk", INT, "partition_key"), ("v", INT, "regular"))
    [ev] = decode(sch, rows({"op": -4, "pk": 0}))
    assert ev.op is Op.PARTITION_DELETE and ev.key == {"pk": 0}


def test_delta_keys_mode() -> None:
    sch = schema(
        ("pk", INT, "partition_key"),
        ("ck", INT, "clustering"),
        ("i1", INT, "regular"),
        cdc=CdcOptions(enabled=True, postimage=True, delta="keys"),
    )
    [ev] = decode(
        sch, rows({"op": 2, "pk": 2, "ck": 22, "cdc$ttl": 2222}, {"op": 9, "pk": 2, "ck": 22, "i1": 222})
    )
    assert ev.op is Op.INSERT and ev.ttl == 2222 and ev.values == {}
    assert ev.postimage == {"pk": 2, "ck": 22, "i1": 222}


def test_batch_rows_are_sorted_by_seq() -> None:
    rs = rows({"op": 1, "pk": 0, "ck": 0, "v1": 0}, {"op": 1, "pk": 0, "ck": 1, "v1": 0})
    evs = decode(PK_CK_V1_V2, list(reversed(rs)))
    assert [e.key["ck"] for e in evs] == [0, 1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{"op": 10, "pk": 0}], "unknown cdc\\$operation 10"),
        ([{"op": -1, "pk": 0}], "unknown cdc\\$operation -1"),
        ([{"op": 5, "pk": 0}], "range delete start without an end"),
        ([{"op": 7, "pk": 0}], "without a start"),
        ([{"op": 5, "pk": 0}, {"op": 1, "pk": 0, "ck": 1}], "has no end"),
        ([{"op": 1, "ck": 0}], "partition key column 'pk' is null"),
        ([{"op": 3, "pk": 0}], "row delete with a null clustering column"),
        ([{"op": 2, "pk": 0}], "insert with all clustering columns null"),
        ([{"op": None, "pk": 0}], "cdc\\$operation is None"),
    ],
)
def test_bad_groups_raise_a_clear_error(spec: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(UndecodableGroup, match=message) as info:
        decode(PK_CK_V1_V2, rows(*spec))
    assert info.value.stream_id == STREAM and info.value.rows


def test_unknown_columns_reveal_an_outdated_schema() -> None:
    dec = LogDecoder(PK_CK_V1_V2)
    assert dec.unknown_columns(["pk", "ck", "v1", "cdc$deleted_v1", "cdc$time"]) == set()
    assert dec.unknown_columns(["pk", "v3", "cdc$deleted_v3"]) == {"v3", "cdc$deleted_v3"}
