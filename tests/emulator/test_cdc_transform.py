"""Delta rows of the CDC transformation, mutation level: every worked example of
shared/docs/scylla-cdc.md §2.3 without images (images: test_cdc_images.py).

Base mutations are built by hand the way the engine builds them (INSERT = live row marker,
``SET c = ...`` on a collection = tombstone at T-1 plus cells, ``DELETE c`` = tombstone at T), and
the log rows are compared column by column (a column missing from the expected dict must be null).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cdc import CdcLog, log_table_def
from tests.scylla_emulator.generations import Generations, stream_token
from tests.scylla_emulator.model import (
    AtomicCell,
    CdcTableOptions,
    CollectionMutation,
    ColumnDef,
    PartitionMutation,
    RangeTombstone,
    RowMutation,
    TableDef,
)

T = 1_700_000_000_000_000  # µs; "now" of every test
ON = CdcTableOptions(enabled=True)


def table(spec: str, cdc: CdcTableOptions = ON, order: dict[str, str] | None = None) -> TableDef:
    """``"pk int pk, ck int ck, v int"`` -> TableDef (kinds: pk, ck, static, regular by default)."""
    cols, npk, nck = [], 0, 0
    for part in _split_top(spec):
        words = part.split()
        name, kind = words[0], words[-1]
        if kind == "pk":
            cols.append(ColumnDef(name, " ".join(words[1:-1]), "partition_key", npk))
            npk += 1
        elif kind == "ck":
            o = (order or {}).get(name, "asc")
            cols.append(ColumnDef(name, " ".join(words[1:-1]), "clustering", nck, o))  # type: ignore[arg-type]
            nck += 1
        elif kind == "static":
            cols.append(ColumnDef(name, " ".join(words[1:-1]), "static"))
        else:
            cols.append(ColumnDef(name, " ".join(words[1:]), "regular"))
    return TableDef("ks", "t", cols, cdc=cdc)


def _split_top(spec: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def cell(v: Any, ts: int = T, ttl: int | None = None) -> AtomicCell:
    return AtomicCell(ts, v, ttl=ttl)


def dead(ts: int = T) -> AtomicCell:
    return AtomicCell(ts, None, live=False)


def pmut(pk: Any = 0, **kw: Any) -> PartitionMutation:
    return PartitionMutation("ks", "t", (pk,), token=hash(pk) % 2**62, **kw)


def row(ck: Any, marker: AtomicCell | None = None, tomb: int | None = None, **cells: Any) -> RowMutation:
    clustering = ck if isinstance(ck, tuple) else (ck,)
    return RowMutation(clustering, marker=marker, row_tombstone_ts=tomb, cells=cells)


def static(**cells: Any) -> RowMutation:
    return RowMutation(None, cells=cells)


class Log:
    """A CdcLog with a fixed clock and generation, plus a column-by-column view of its output."""

    def __init__(self, base: TableDef, read_row: Any = None) -> None:
        self.base = base
        self.log = log_table_def(base)
        self.gens = Generations(
            now_ms=lambda: T // 1000, first_start_ms=T // 1000 - 60_000, rng=random.Random(1)
        )
        self.cdc = CdcLog(self.gens, lambda: T, rng=random.Random(2))
        self.read_row = read_row or (lambda *_a: None)

    def groups(self, *muts: PartitionMutation) -> list[list[dict[str, Any]]]:
        """Log rows per group; checks the group invariants (one stream and cdc$time, seq 0..n-1,
        end_of_batch true on the last row only, log cells at T with the cdc ttl)."""
        out = []
        for lm in self.cdc.transform(self.base, self.log, list(muts), self.read_row):
            (stream,) = lm.partition_key
            assert len(stream) == 16 and lm.token == stream_token(stream)
            times = {r.clustering[0] for r in lm.rows}  # type: ignore[index]
            assert len(times) == 1
            group = []
            for i, r in enumerate(lm.rows):
                assert r.clustering is not None and r.clustering[1] == i
                assert r.marker is None
                values = {k: c.value for k, c in r.cells.items()}
                assert values.pop("cdc$end_of_batch", None) == (True if i == len(lm.rows) - 1 else None)
                ttl = self.base.cdc.ttl if self.base.cdc else 86400
                for c in r.cells.values():
                    assert c.live and c.ttl == (ttl or None)
                values["_time"] = r.clustering[0]
                group.append(values)
            out.append(group)
        return out

    def rows(self, *muts: PartitionMutation) -> list[dict[str, Any]]:
        """The rows of a single group, without ``_time`` (whose timestamp must be the group's T)."""
        groups = self.groups(*muts)
        assert len(groups) == 1, groups
        return [{k: v for k, v in r.items() if k != "_time"} for r in groups[0]]


def norm(v: Any) -> Any:
    """Driver/collection values -> plain comparable Python values."""
    if hasattr(v, "items"):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(norm(x) for x in v)
    if isinstance(v, list | set | frozenset) or type(v).__name__ == "SortedSet":
        return {norm(x) for x in v}
    return v


def same(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [{k: norm(v) for k, v in r.items()} for r in actual] == expected


def micros(u: uuid.UUID) -> int:
    return (u.time - 0x01B21DD213814000) // 10


V12 = "pk int pk, ck int ck, v1 int, v2 int"


# ------------------------------------------------------------------------------ updates / inserts


def test_update_set_null_and_column_delete() -> None:
    log = Log(table(V12))
    same(log.rows(pmut(rows=[row(0, v1=cell(0))])), [{"pk": 0, "ck": 0, "v1": 0, "cdc$operation": 1}])
    expect = [{"pk": 0, "ck": 0, "cdc$deleted_v2": True, "cdc$operation": 1}]
    same(log.rows(pmut(rows=[row(0, v2=dead())])), expect)  # SET v2 = null and DELETE v2: same mutation


def test_inserts() -> None:
    log = Log(table(V12))
    same(
        log.rows(pmut(rows=[row(0, cell(None), v1=cell(0))])),
        [{"pk": 0, "ck": 0, "v1": 0, "cdc$operation": 2}],
    )
    same(
        log.rows(pmut(rows=[row(0, cell(None), v2=dead())])),
        [{"pk": 0, "ck": 0, "cdc$deleted_v2": True, "cdc$operation": 2}],
    )
    same(log.rows(pmut(rows=[row(0, cell(None))])), [{"pk": 0, "ck": 0, "cdc$operation": 2}])


def test_cdc_time_is_a_random_timeuuid_of_the_write_timestamp() -> None:
    log = Log(table(V12))
    (g1,) = log.groups(pmut(rows=[row(0, v1=cell(0, ts=T - 7))]))
    (g2,) = log.groups(pmut(rows=[row(0, v1=cell(0, ts=T - 7))]))
    t1, t2 = g1[0]["_time"], g2[0]["_time"]
    assert t1.version == 1 and micros(t1) == micros(t2) == T - 7 and t1 != t2
    assert t1.variant == uuid.RFC_4122


def test_static_and_clustered_parts_are_split() -> None:
    log = Log(table("pk int pk, ck int ck, s int static, c int"))
    upd = pmut(static_row=static(s=cell(0)), rows=[row(0, c=cell(0))])
    same(
        log.rows(upd), [{"pk": 0, "s": 0, "cdc$operation": 1}, {"pk": 0, "ck": 0, "c": 0, "cdc$operation": 1}]
    )
    ins = pmut(static_row=static(s=cell(0)), rows=[row(0, cell(None), c=cell(0))])
    same(
        log.rows(ins), [{"pk": 0, "s": 0, "cdc$operation": 1}, {"pk": 0, "ck": 0, "c": 0, "cdc$operation": 2}]
    )


# -------------------------------------------------------------------------------------- deletes


def test_row_and_partition_delete() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    same(log.rows(pmut(rows=[row(0, tomb=T)])), [{"pk": 0, "ck": 0, "cdc$operation": 3}])
    same(log.rows(pmut(partition_tombstone_ts=T)), [{"pk": 0, "cdc$operation": 4}])


def test_partition_delete_in_table_without_clustering_key() -> None:
    log = Log(table("pk int pk, v int"))
    same(log.rows(pmut(partition_tombstone_ts=T)), [{"pk": 0, "cdc$operation": 4}])


def test_range_deletes() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    rt = RangeTombstone((0,), False, (2,), True, T)  # ck <= 2 AND ck > 0
    same(
        log.rows(pmut(range_tombstones=[rt])),
        [{"pk": 0, "ck": 0, "cdc$operation": 6}, {"pk": 0, "ck": 2, "cdc$operation": 7}],
    )
    rt = RangeTombstone((), True, (3,), False, T)  # ck < 3
    same(
        log.rows(pmut(range_tombstones=[rt])),
        [{"pk": 0, "cdc$operation": 5}, {"pk": 0, "ck": 3, "cdc$operation": 8}],
    )
    rt = RangeTombstone((), False, (), False, T)  # unbounded on both sides: reported inclusive
    same(
        log.rows(pmut(range_tombstones=[rt])), [{"pk": 0, "cdc$operation": 5}, {"pk": 0, "cdc$operation": 7}]
    )


def test_multi_column_range_delete_prefix() -> None:
    log = Log(table("pk int pk, ck1 int ck, ck2 int ck, ck3 int ck, v int"))
    rt = RangeTombstone((0, 0), False, (0, 3), False, T)  # ck1 = 0 AND ck2 > 0 AND ck2 < 3
    same(
        log.rows(pmut(range_tombstones=[rt])),
        [
            {"pk": 0, "ck1": 0, "ck2": 0, "cdc$operation": 6},
            {"pk": 0, "ck1": 0, "ck2": 3, "cdc$operation": 8},
        ],
    )


def test_system_originated_deletes_use_service_ops() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    same(
        log.rows(pmut(rows=[row(0, tomb=T)], system_originated=True)),
        [{"pk": 0, "ck": 0, "cdc$operation": -3}],
    )
    log = Log(table("pk int pk, v int"))
    same(log.rows(pmut(partition_tombstone_ts=T, system_originated=True)), [{"pk": 0, "cdc$operation": -4}])


# ------------------------------------------------------------------------------------------- TTL


def test_ttl_column() -> None:
    log = Log(table("pk int pk, ck int ck, a int, b int"))
    same(log.rows(pmut(rows=[row(0, a=cell(0))])), [{"pk": 0, "ck": 0, "a": 0, "cdc$operation": 1}])
    same(
        log.rows(pmut(rows=[row(0, a=cell(0, ttl=5))])),
        [{"pk": 0, "ck": 0, "a": 0, "cdc$operation": 1, "cdc$ttl": 5}],
    )
    same(
        log.rows(pmut(rows=[row(0, a=dead())])),
        [{"pk": 0, "ck": 0, "cdc$deleted_a": True, "cdc$operation": 1}],
    )
    same(
        log.rows(pmut(rows=[row(0, a=cell(0, ttl=5), b=dead())])),
        [
            {"pk": 0, "ck": 0, "cdc$deleted_b": True, "cdc$operation": 1},
            {"pk": 0, "ck": 0, "a": 0, "cdc$operation": 1, "cdc$ttl": 5},
        ],
    )


def test_insert_with_ttl_and_delta_keys() -> None:
    log = Log(table("pk int pk, ck int ck, i1 int", CdcTableOptions(enabled=True, delta="keys")))
    same(
        log.rows(pmut(2, rows=[row(22, cell(None, ttl=2222), i1=cell(222, ttl=2222))])),
        [{"pk": 2, "ck": 22, "cdc$operation": 2, "cdc$ttl": 2222}],
    )


def test_collection_with_ttl_is_split() -> None:
    log = Log(table("a int pk, b map<int, int>"))
    upd = pmut(rows=[RowMutation((), cells={"b": CollectionMutation(T - 1, [(0, cell(0, ttl=5))])})])
    same(
        log.rows(upd),
        [
            {"a": 0, "cdc$deleted_b": True, "cdc$operation": 1},
            {"a": 0, "b": {0: 0}, "cdc$operation": 1, "cdc$ttl": 5},
        ],
    )
    ins = pmut(
        rows=[
            RowMutation(
                (), marker=cell(None, ttl=5), cells={"b": CollectionMutation(T - 1, [(0, cell(0, ttl=5))])}
            )
        ]
    )
    same(
        log.rows(ins),
        [
            {"a": 0, "cdc$operation": 2, "cdc$ttl": 5},
            {"a": 0, "cdc$deleted_b": True, "cdc$operation": 1},
            {"a": 0, "b": {0: 0}, "cdc$operation": 1, "cdc$ttl": 5},
        ],
    )
    ins = pmut(
        rows=[RowMutation((), marker=cell(None), cells={"b": CollectionMutation(T - 1, [(0, cell(0))])})]
    )
    same(log.rows(ins), [{"a": 0, "b": {0: 0}, "cdc$deleted_b": True, "cdc$operation": 2}])


def test_two_collections_with_ttl_share_one_cells_row() -> None:
    # split.cc comment: insert into t (a, b, c) values (0, {1:1}, {2:2}) USING TTL 5 -> 3 delta rows
    log = Log(table("a int pk, b map<int, int>, c map<int, int>"))
    cells = {
        "b": CollectionMutation(T - 1, [(1, cell(1, ttl=5))]),
        "c": CollectionMutation(T - 1, [(2, cell(2, ttl=5))]),
    }
    same(
        log.rows(pmut(rows=[RowMutation((), marker=cell(None, ttl=5), cells=cells)])),
        [
            {"a": 0, "cdc$operation": 2, "cdc$ttl": 5},
            {"a": 0, "cdc$deleted_b": True, "cdc$deleted_c": True, "cdc$operation": 1},
            {"a": 0, "b": {1: 1}, "c": {2: 2}, "cdc$operation": 1, "cdc$ttl": 5},
        ],
    )


# ----------------------------------------------------------------------------------- collections


def coll(tomb: int | None = None, **_kw: Any) -> Any:
    def make(*cells: tuple[Any, AtomicCell]) -> CollectionMutation:
        return CollectionMutation(tomb, list(cells))

    return make


def test_maps() -> None:
    log = Log(table("pk int pk, ck int ck, v map<int, text>"))
    k = {"pk": 0, "ck": 0, "cdc$operation": 1}

    def one(cm: CollectionMutation, marker: AtomicCell | None = None) -> list[dict[str, Any]]:
        return log.rows(pmut(rows=[row(0, marker, v=cm)]))

    same(one(coll()((1, cell("v1")), (2, cell("v2")))), [{**k, "v": {1: "v1", 2: "v2"}}])
    same(one(coll()((1, dead()), (2, dead()), (3, dead()))), [{**k, "cdc$deleted_elements_v": {1, 2, 3}}])
    same(one(coll(T - 1)()), [{**k, "cdc$deleted_v": True}])  # SET v = null / SET v = {}
    overwrite = {**k, "v": {1: "v1", 2: "v2"}, "cdc$deleted_v": True}
    same(one(coll(T - 1)((1, cell("v1")), (2, cell("v2")))), [overwrite])
    same(one(coll(T - 1)((1, cell("v1")), (2, cell("v2"))), cell(None)), [{**overwrite, "cdc$operation": 2}])


def test_sets() -> None:
    log = Log(table("pk int pk, ck int ck, v set<int>"))
    k = {"pk": 0, "ck": 0, "cdc$operation": 1}
    same(log.rows(pmut(rows=[row(0, v=coll()((1, cell(None)), (2, cell(None))))])), [{**k, "v": {1, 2}}])
    removed = coll()((1, dead()), (2, dead()), (3, dead()))
    same(log.rows(pmut(rows=[row(0, v=removed)])), [{**k, "cdc$deleted_elements_v": {1, 2, 3}}])
    overwrite = coll(T - 1)((1, cell(None)), (2, cell(None)))
    same(log.rows(pmut(rows=[row(0, v=overwrite)])), [{**k, "v": {1, 2}, "cdc$deleted_v": True}])


def test_lists() -> None:
    log = Log(table("pk int pk, ck int ck, v list<int>"))
    k = {"pk": 0, "ck": 0, "cdc$operation": 1}
    k1, k2 = (
        uuid.UUID("db3214f0-2fea-11eb-af55-000000000001"),
        uuid.UUID("db3214f1-2fea-11eb-af55-000000000001"),
    )
    same(log.rows(pmut(rows=[row(0, v=coll()((k1, cell(1)), (k2, cell(2))))])), [{**k, "v": {k1: 1, k2: 2}}])
    same(
        log.rows(pmut(rows=[row(0, v=coll()((k1, dead()), (k2, dead())))])),
        [{**k, "cdc$deleted_elements_v": {k1, k2}}],
    )
    same(log.rows(pmut(rows=[row(0, v=coll(T - 1)())])), [{**k, "cdc$deleted_v": True}])
    replaced = coll(T - 1)((k1, cell(1)), (k2, cell(2)))
    same(log.rows(pmut(rows=[row(0, v=replaced)])), [{**k, "v": {k1: 1, k2: 2}, "cdc$deleted_v": True}])
    assert log.log.column("v").type == "frozen<map<timeuuid, int>>"  # type: ignore[union-attr]


def test_udts() -> None:
    log = Log(table("pk int pk, ck int ck, v ut"))
    k = {"pk": 0, "ck": 0, "cdc$operation": 1}

    def one(cm: CollectionMutation) -> list[dict[str, Any]]:
        rows = log.rows(pmut(rows=[row(0, v=cm)]))
        for r in rows:  # a UDT value of unknown arity reads null past its end
            if "v" in r:
                r["v"] = tuple(r["v"][i] for i in range(3))
        return rows

    same(one(coll()((0, cell(0)), (1, cell(1)))), [{**k, "v": (0, 1, None)}])
    same(
        one(coll()((0, dead()), (1, dead()))),
        [{**k, "v": (None, None, None), "cdc$deleted_elements_v": {0, 1}}],
    )
    same(
        one(coll()((0, cell(42)), (2, dead()))), [{**k, "v": (42, None, None), "cdc$deleted_elements_v": {2}}]
    )
    # log.cc: a UDT delta always carries a (here all-null) value, also for SET v = null
    same(one(coll(T - 1)()), [{**k, "v": (None, None, None), "cdc$deleted_v": True}])
    same(one(coll(T - 1)((0, cell(1)), (1, cell(2)))), [{**k, "v": (1, 2, None), "cdc$deleted_v": True}])


def test_frozen_collections_are_atomic() -> None:
    log = Log(table("pk int pk, ck int ck, v frozen<map<int, text>>, t tuple<int, int>"))
    assert log.log.column("cdc$deleted_elements_v") is None
    same(
        log.rows(pmut(rows=[row(0, v=cell({1: "a"}), t=dead())])),
        [{"pk": 0, "ck": 0, "v": {1: "a"}, "cdc$deleted_t": True, "cdc$operation": 1}],
    )


def test_column_delete_of_collection_is_logged_at_t_plus_1() -> None:
    log = Log(table("pk int pk, ck int ck, v map<int, int>, w int"))
    groups = log.groups(
        pmut(rows=[row(0, v=coll(T - 1)(), w=dead(T - 1))])
    )  # DELETE v, w USING TIMESTAMP T-1
    assert [micros(g[0]["_time"]) for g in groups] == [T - 1, T]
    assert [g[0].get("cdc$deleted_w") for g in groups] == [True, None]
    assert [g[0].get("cdc$deleted_v") for g in groups] == [None, True]


# ---------------------------------------------------------------------------------------- batches


def test_batch_same_timestamp_one_group_in_clustering_order() -> None:
    log = Log(table("pk int pk, ck int ck, a int"))
    rows = log.rows(pmut(rows=[row(1, a=cell(0)), row(0, a=cell(0))]))
    same(
        rows, [{"pk": 0, "ck": 0, "a": 0, "cdc$operation": 1}, {"pk": 0, "ck": 1, "a": 0, "cdc$operation": 1}]
    )


def test_descending_clustering_order() -> None:
    log = Log(table("pk int pk, ck int ck, a int", order={"ck": "desc"}))
    rows = log.rows(pmut(rows=[row(0, a=cell(0)), row(1, a=cell(0))]))
    assert [r["ck"] for r in rows] == [1, 0]


def test_batch_with_two_timestamps_gives_two_groups() -> None:
    log = Log(table("pk int pk, ck int ck, a int"))
    groups = log.groups(pmut(rows=[row(0, a=cell(0, ts=T - 2)), row(1, a=cell(0, ts=T - 1))]))
    assert [(micros(g[0]["_time"]), len(g), g[0]["ck"]) for g in groups] == [(T - 2, 1, 0), (T - 1, 1, 1)]


def test_two_partitions_same_timestamp_get_different_cdc_time() -> None:
    log = Log(table("pk int pk, ck int ck, a int"))
    groups = log.groups(pmut(0, rows=[row(0, a=cell(0))]), pmut(1, rows=[row(0, a=cell(0))]))
    assert len(groups) == 2
    assert groups[0][0]["_time"] != groups[1][0]["_time"]
    assert micros(groups[0][0]["_time"]) == micros(groups[1][0]["_time"]) == T


def test_statements_of_one_partition_are_merged() -> None:
    log = Log(table("pk int pk, ck int ck, a int, b int"))
    rows = log.rows(pmut(rows=[row(0, a=cell(1))]), pmut(rows=[row(0, b=cell(2))]))
    same(rows, [{"pk": 0, "ck": 0, "a": 1, "b": 2, "cdc$operation": 1}])


def test_upserts_before_deletes_inside_a_group() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    m = pmut(
        rows=[row(1, cell(None), v=cell(100))], range_tombstones=[RangeTombstone((1,), True, (2,), True, T)]
    )
    same(
        log.rows(m),
        [
            {"pk": 0, "ck": 1, "v": 100, "cdc$operation": 2},
            {"pk": 0, "ck": 1, "cdc$operation": 5},
            {"pk": 0, "ck": 2, "cdc$operation": 7},
        ],
    )
    same(
        log.rows(pmut(rows=[row(1, cell(None), v=cell(100))], partition_tombstone_ts=T)),
        [{"pk": 0, "ck": 1, "v": 100, "cdc$operation": 2}, {"pk": 0, "cdc$operation": 4}],
    )


def test_inserts_before_updates_when_split() -> None:
    log = Log(table("pk int pk, ck int ck, v int, m map<int, int>"))
    # a collection cell next to a row marker forces the split path (split.cc::should_split)
    m = pmut(rows=[row(0, v=cell(1)), row(1, cell(None), m=coll(T - 1)((1, cell(1))))])
    assert [(r["ck"], r["cdc$operation"]) for r in log.rows(m)] == [(1, 2), (0, 1)]


def test_unsplit_batch_keeps_clustering_order() -> None:
    # same timestamp, same TTL, atomic cells only: processed as one change in clustering order
    log = Log(table("pk int pk, ck int ck, v int"))
    m = pmut(rows=[row(0, v=cell(1)), row(1, cell(None), v=cell(2))])
    assert [(r["ck"], r["cdc$operation"]) for r in log.rows(m)] == [(0, 1), (1, 2)]


# ---------------------------------------------------------------------------- streams and clocks


def test_group_goes_to_the_stream_of_the_partition_token() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    for pk in range(20):
        m = pmut(pk, rows=[row(0, v=cell(1))])
        (lm,) = log.cdc.transform(log.base, log.log, [m], log.read_row)
        assert lm.partition_key == (log.gens.stream_for(m.token, T),)


def test_write_from_the_future_is_rejected() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    assert log.rows(pmut(rows=[row(0, v=cell(1, ts=T + 5_000_000))]))
    with pytest.raises(CqlError) as e:
        log.rows(pmut(rows=[row(0, v=cell(1, ts=T + 5_000_001))]))
    assert e.value.code == ErrorCode.INVALID
    assert e.value.message.startswith(
        'cdc: attempted to get a stream "from the future" (2023/11/14 22:13:25;'
    )


def test_write_before_the_generation_is_rejected() -> None:
    log = Log(table("pk int pk, ck int ck, v int"))
    assert log.rows(pmut(rows=[row(0, v=cell(1, ts=T - 60_000_000))]))  # the generation's first µs
    with pytest.raises(CqlError, match='"from the past"'):
        log.rows(pmut(rows=[row(0, v=cell(1, ts=T - 60_000_001))]))


def test_log_cells_carry_the_cdc_ttl() -> None:
    for ttl in (0, 60):
        log = Log(table("pk int pk, ck int ck, v int", CdcTableOptions(enabled=True, ttl=ttl)))
        (lm,) = log.cdc.transform(log.base, log.log, [pmut(rows=[row(0, v=cell(1))])], log.read_row)
        for c in lm.rows[0].cells.values():
            assert c.ts == T
            assert (c.ttl, c.expiry) == ((ttl, T + ttl * 1_000_000) if ttl else (None, None))


def test_disabled_cdc_logs_nothing() -> None:
    base = table("pk int pk, ck int ck, v int")
    log = Log(base)
    base.cdc = CdcTableOptions(enabled=False)
    assert log.cdc.transform(base, log.log, [pmut(rows=[row(0, v=cell(1))])], log.read_row) == []
