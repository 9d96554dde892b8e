"""Preimage and postimage rows, mutation level (shared/docs/scylla-cdc.md §3.2 and the Scylla
approval tests it cites). A small in-test store applies each base mutation after it is logged and
answers ``read_row`` with the state before the next write."""

from __future__ import annotations

from typing import Any

from tests.emulator.test_cdc_transform import Log, T, cell, coll, dead, pmut, row, same, static, table
from tests.scylla_emulator.cdctypes import collection_kind
from tests.scylla_emulator.model import (
    AtomicCell,
    CdcTableOptions,
    CollectionMutation,
    PartitionMutation,
    RangeTombstone,
    TableDef,
)


class Store:
    """Latest-write-wins state of one table, enough for sequential single-writer tests."""

    def __init__(self, base: TableDef) -> None:
        self.base = base
        self.parts: dict[Any, dict[str, Any]] = {}

    def apply(self, pm: PartitionMutation) -> None:
        part = self.parts.setdefault(pm.partition_key, {"static": {}, "rows": {}})
        if pm.partition_tombstone_ts is not None:
            part["static"].clear()
            part["rows"].clear()
        for rt in pm.range_tombstones:
            for ck in list(part["rows"]):
                lo = (
                    not rt.start
                    or ck[: len(rt.start)] > rt.start
                    or (rt.start_inclusive and ck[: len(rt.start)] == rt.start)
                )
                hi = (
                    not rt.end
                    or ck[: len(rt.end)] < rt.end
                    or (rt.end_inclusive and ck[: len(rt.end)] == rt.end)
                )
                if lo and hi:
                    del part["rows"][ck]
        if pm.static_row is not None:
            self._cells(part["static"], pm.static_row.cells)
        for r in pm.rows:
            if r.row_tombstone_ts is not None:
                part["rows"].pop(r.clustering, None)
            if r.marker is not None or r.cells:
                state = part["rows"].setdefault(r.clustering, {"": False})
                state[""] = state[""] or r.marker is not None
                self._cells(state, r.cells)

    @staticmethod
    def _cells(state: dict[str, Any], cells: dict[str, AtomicCell | CollectionMutation]) -> None:
        for name, c in cells.items():
            if isinstance(c, AtomicCell):
                if c.live:
                    state[name] = c.value
                else:
                    state.pop(name, None)
                continue
            cur = {} if c.tombstone_ts is not None else dict(state.get(name) or {})
            for k, x in c.cells:
                if x.live:
                    cur[k] = x.value
                else:
                    cur.pop(k, None)
            state[name] = cur

    def read_row(
        self, base: TableDef, pk: tuple[Any, ...], ck: tuple[Any, ...] | None
    ) -> dict[str, Any] | None:
        part = self.parts.get(pk)
        if part is None:
            return None
        state = part["static"] if ck is None else part["rows"].get(ck)
        if state is None:
            return None
        cols = base.static_columns if ck is None else base.regular_columns
        out: dict[str, Any] = {}
        for c in cols:
            v = state.get(c.name)
            if collection_kind(c.type) is not None:
                v = sorted(v.items()) if v else None
            out[c.name] = v
        if not state.get("") and all(v is None for v in out.values()):
            return None
        return out


class Session:
    def __init__(self, base: TableDef) -> None:
        self.store = Store(base)
        self.log = Log(base, self.store.read_row)

    def write(self, *muts: PartitionMutation) -> list[dict[str, Any]]:
        rows = self.log.rows(*muts)
        for m in muts:
            self.store.apply(m)
        return rows

    def groups(self, *muts: PartitionMutation) -> list[list[dict[str, Any]]]:
        groups = self.log.groups(*muts)
        for m in muts:
            self.store.apply(m)
        return groups


FULL_POST = CdcTableOptions(enabled=True, preimage="full", postimage=True)
PRE = CdcTableOptions(enabled=True, preimage="true")
PRE_POST = CdcTableOptions(enabled=True, preimage="true", postimage=True)


def test_docs_preimage_full_postimage_sequence() -> None:
    s = Session(table("pk int pk, ck int ck, v1 int, v2 int", FULL_POST))
    k0 = {"pk": 0, "ck": 0}
    same(
        s.write(pmut(rows=[row(0, v1=cell(0))])),
        [{**k0, "v1": 0, "cdc$operation": 1}, {**k0, "v1": 0, "cdc$operation": 9}],
    )
    k1 = {"pk": 0, "ck": 1}
    same(
        s.write(pmut(rows=[row(1, v2=cell(0))])),
        [{**k1, "v2": 0, "cdc$operation": 1}, {**k1, "v2": 0, "cdc$operation": 9}],
    )
    k2 = {"pk": 0, "ck": 2}
    same(
        s.write(pmut(rows=[row(2, v1=cell(0))])),
        [{**k2, "v1": 0, "cdc$operation": 1}, {**k2, "v1": 0, "cdc$operation": 9}],
    )
    same(
        s.write(pmut(rows=[row(0, cell(None), v2=cell(0))])),
        [
            {**k0, "v1": 0, "cdc$deleted_v2": True, "cdc$operation": 0},  # null before: cdc$deleted_ set
            {**k0, "v2": 0, "cdc$operation": 2},
            {**k0, "v1": 0, "v2": 0, "cdc$operation": 9},
        ],
    )
    same(
        s.write(pmut(rows=[row(0, tomb=T)])),
        [{**k0, "v1": 0, "v2": 0, "cdc$operation": 0}, {**k0, "cdc$operation": 3}],
    )
    rt = RangeTombstone((1,), True, (2,), False, T)
    same(s.write(pmut(range_tombstones=[rt])), [{**k1, "cdc$operation": 5}, {**k2, "cdc$operation": 8}])
    same(s.write(pmut(partition_tombstone_ts=T)), [{"pk": 0, "cdc$operation": 4}])


def test_docs_map_preimage_postimage() -> None:
    s = Session(table("pk int pk, ck int ck, v map<int, int>", PRE_POST))
    s.write(pmut(rows=[row(0, v=coll(T - 2)((1, cell(1, T - 1)), (2, cell(2, T - 1))))]))
    k = {"pk": 0, "ck": 0}
    same(
        s.write(pmut(rows=[row(0, v=coll()((3, cell(3)), (2, dead())))])),
        [
            {**k, "v": {1: 1, 2: 2}, "cdc$operation": 0},
            {**k, "v": {3: 3}, "cdc$deleted_elements_v": {2}, "cdc$operation": 1},
            {**k, "v": {1: 1, 3: 3}, "cdc$operation": 9},
        ],
    )


def test_static_and_clustered_rows_preimage() -> None:
    # test/cql/cdc_static_and_clustered_rows_test.result
    s = Session(table("pk int pk, ck int ck, vs int static, vc int", PRE))
    same(s.write(pmut(static_row=static(vs=cell(0)))), [{"pk": 0, "vs": 0, "cdc$operation": 1}])
    same(
        s.write(pmut(static_row=static(vs=cell(1)))),
        [{"pk": 0, "vs": 0, "cdc$operation": 0}, {"pk": 0, "vs": 1, "cdc$operation": 1}],
    )
    same(
        s.write(pmut(static_row=static(vs=cell(2)), rows=[row(0, vc=cell(2))])),
        [
            {"pk": 0, "vs": 1, "cdc$operation": 0},
            {"pk": 0, "vs": 2, "cdc$operation": 1},
            {"pk": 0, "ck": 0, "vc": 2, "cdc$operation": 1},
        ],
    )
    same(
        s.write(pmut(static_row=static(vs=cell(3)), rows=[row(0, vc=cell(3))])),
        [
            {"pk": 0, "vs": 2, "cdc$operation": 0},
            {"pk": 0, "ck": 0, "vc": 2, "cdc$operation": 0},
            {"pk": 0, "vs": 3, "cdc$operation": 1},
            {"pk": 0, "ck": 0, "vc": 3, "cdc$operation": 1},
        ],
    )
    same(s.write(pmut(1, rows=[row(0, vc=cell(4))])), [{"pk": 1, "ck": 0, "vc": 4, "cdc$operation": 1}])
    same(
        s.write(pmut(1, rows=[row(0, vc=cell(5))])),
        [{"pk": 1, "ck": 0, "vc": 4, "cdc$operation": 0}, {"pk": 1, "ck": 0, "vc": 5, "cdc$operation": 1}],
    )


def test_batch_delete_postimage() -> None:
    # test/cql/cdc_batch_delete_postimage_test.result
    spec = "pk int pk, ck int ck, v int"
    ins = row(1, cell(None), v=cell(100))
    k = {"pk": 1, "ck": 1}
    s = Session(table(spec, PRE_POST))
    same(
        s.write(pmut(1, rows=[ins], range_tombstones=[RangeTombstone((1,), True, (2,), True, T)])),
        [
            {**k, "v": 100, "cdc$operation": 2},
            {**k, "cdc$operation": 5},
            {"pk": 1, "ck": 2, "cdc$operation": 7},
        ],
    )
    s = Session(table(spec, PRE_POST))
    same(
        s.write(pmut(1, rows=[ins], partition_tombstone_ts=T)),
        [{**k, "v": 100, "cdc$operation": 2}, {"pk": 1, "cdc$operation": 4}],
    )
    s = Session(table(spec, PRE_POST))
    same(
        s.write(pmut(1, rows=[ins], range_tombstones=[RangeTombstone((2,), True, (3,), True, T)])),
        [
            {**k, "v": 100, "cdc$operation": 2},
            {"pk": 1, "ck": 2, "cdc$operation": 5},
            {"pk": 1, "ck": 3, "cdc$operation": 7},
            {**k, "v": 100, "cdc$operation": 9},
        ],
    )


def test_delta_modes() -> None:
    # test/cql/cdc_delta_modes_test.result
    s = Session(
        table(
            "pk int pk, ck int ck, i1 int",
            CdcTableOptions(enabled=True, preimage="true", postimage=True, delta="keys"),
        )
    )
    same(
        s.write(pmut(2, rows=[row(22, cell(None, ttl=2222), i1=cell(222, ttl=2222))])),
        [
            {"pk": 2, "ck": 22, "cdc$operation": 2, "cdc$ttl": 2222},
            {"pk": 2, "ck": 22, "i1": 222, "cdc$operation": 9},
        ],
    )
    s = Session(table("pk int pk, ck int ck, i1 int", PRE_POST))
    same(
        s.write(pmut(3, rows=[row(33, cell(None, ttl=3333), i1=cell(333, ttl=3333))])),
        [
            {"pk": 3, "ck": 33, "i1": 333, "cdc$operation": 2, "cdc$ttl": 3333},
            {"pk": 3, "ck": 33, "i1": 333, "cdc$operation": 9},
        ],
    )


def test_lwt_sequence_with_preimage() -> None:
    # test/cql/cdc_with_lwt_test.result (the engine drops non-applied LWTs before CDC)
    s = Session(table("pk int pk, ck int ck, val int", PRE))
    k = {"pk": 1, "ck": 1}
    same(s.write(pmut(1, rows=[row(1, cell(None), val=cell(111))])), [{**k, "val": 111, "cdc$operation": 2}])
    same(
        s.write(pmut(1, rows=[row(1, val=cell(333))])),
        [{**k, "val": 111, "cdc$operation": 0}, {**k, "val": 333, "cdc$operation": 1}],
    )
    same(
        s.write(pmut(1, rows=[row(1, tomb=T)])),
        [{**k, "val": 333, "cdc$operation": 0}, {**k, "cdc$operation": 3}],
    )


def test_partition_delete_without_clustering_key_has_preimage() -> None:
    s = Session(table("pk int pk, v int, w int", PRE))
    s.write(pmut(rows=[row((), cell(None), v=cell(1))]))
    same(
        s.write(pmut(partition_tombstone_ts=T)),
        [{"pk": 0, "v": 1, "cdc$deleted_w": True, "cdc$operation": 0}, {"pk": 0, "cdc$operation": 4}],
    )


def test_no_images_for_range_and_partition_deletes_in_clustered_tables() -> None:
    s = Session(table("pk int pk, ck int ck, v int", FULL_POST))
    s.write(pmut(rows=[row(0, cell(None), v=cell(1))]))
    assert [
        r["cdc$operation"] for r in s.write(pmut(range_tombstones=[RangeTombstone((), True, (), True, T)]))
    ] == [5, 7]
    s.write(pmut(rows=[row(0, cell(None), v=cell(1))]))
    assert [r["cdc$operation"] for r in s.write(pmut(partition_tombstone_ts=T))] == [4]


def test_postimage_of_insert_overwriting_collection_with_ttl() -> None:
    # log.cc comment above `class transformer` (#6070, #6084): postimage b is {0:0}, not {0:0, 1:1}
    s = Session(table("a int pk, b map<int, int>", CdcTableOptions(enabled=True, postimage=True)))
    s.write(pmut(rows=[row((), b=coll()((1, cell(1, T - 5))))]))
    rows = s.write(
        pmut(rows=[row((), cell(None, ttl=5), b=CollectionMutation(T - 1, [(0, cell(0, ttl=5))]))])
    )
    same(
        rows,
        [
            {"a": 0, "cdc$operation": 2, "cdc$ttl": 5},
            {"a": 0, "cdc$deleted_b": True, "cdc$operation": 1},
            {"a": 0, "b": {0: 0}, "cdc$operation": 1, "cdc$ttl": 5},
            {"a": 0, "b": {0: 0}, "cdc$operation": 9},
        ],
    )


def test_preimage_true_lists_only_the_written_columns() -> None:
    s = Session(table("pk int pk, ck int ck, a int, b int", PRE))
    s.write(pmut(rows=[row(0, cell(None, T - 9), a=cell(1, T - 9), b=cell(2, T - 9))]))
    same(
        s.write(pmut(rows=[row(0, b=cell(3))])),
        [{"pk": 0, "ck": 0, "b": 2, "cdc$operation": 0}, {"pk": 0, "ck": 0, "b": 3, "cdc$operation": 1}],
    )


def test_preimage_true_reads_the_columns_of_the_first_row_only() -> None:
    # log.cc::pre_image_select selects the cells of the first clustered row of the mutation
    # ("TODO: this assumes all mutations touch the same set of columns"): b of ck 1 is not read.
    s = Session(table("pk int pk, ck int ck, a int, b int", PRE))
    s.write(
        pmut(rows=[row(0, cell(None, T - 9), a=cell(1, T - 9)), row(1, cell(None, T - 9), b=cell(2, T - 9))])
    )
    rows = s.write(pmut(rows=[row(0, a=cell(5)), row(1, b=cell(6))]))
    assert rows[:2] == [
        {"pk": 0, "ck": 0, "a": 1, "cdc$operation": 0},
        {"pk": 0, "ck": 1, "cdc$deleted_b": True, "cdc$operation": 0},
    ]


def test_later_timestamp_group_sees_the_earlier_one_in_its_preimage() -> None:
    s = Session(table("pk int pk, ck int ck, v int", PRE))
    s.write(pmut(rows=[row(0, cell(None, T - 9), v=cell(1, T - 9))]))
    groups = s.groups(pmut(rows=[row(0, v=cell(2, T - 2))]), pmut(rows=[row(0, v=cell(3, T - 1))]))
    # one partition: merged, the later cell wins (Scylla merges a batch's mutations per partition)
    assert [[(r["cdc$operation"], r.get("v")) for r in g] for g in groups] == [[(0, 1), (1, 3)]]
    groups = s.groups(pmut(rows=[row(0, v=cell(4, T - 1)), row(1, cell(None, T), v=cell(5, T))]))
    assert [[(r["cdc$operation"], r.get("ck"), r.get("v")) for r in g] for g in groups] == [
        [(0, 0, 3), (1, 0, 4)],
        [(2, 1, 5)],
    ]


def test_udt_postimage_after_field_delete() -> None:
    s = Session(table("pk int pk, ck int ck, v ut", CdcTableOptions(enabled=True, postimage=True)))
    s.write(pmut(rows=[row(0, v=coll(T - 10)((0, cell(1, T - 9)), (1, cell(2, T - 9))))]))
    rows = s.write(pmut(rows=[row(0, v=coll()((1, dead())))]))
    assert rows[1]["cdc$operation"] == 9
    assert tuple(rows[1]["v"][i] for i in range(3)) == (1, None, None)
