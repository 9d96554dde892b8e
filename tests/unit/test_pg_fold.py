"""postgres/fold.py: a batch of change events -> per-row plans and segments (pure; no PostgreSQL)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from cdcd.events import ChangeEvent, Op, Position, RangeBound
from cdcd.schema import Column, TableSchema, UdtDef, parse_cql_type
from cdcd.sinks.postgres.fold import TableCodec, fold, resolve
from cdcd.sinks.postgres.sql import layouts_for

UT = UdtDef("ks", "ut", ("a", "b"), (parse_cql_type("int"), parse_cql_type("text")))
_clock = itertools.count(1_700_000_000_000_000, 10)


def codec(*cols: tuple[str, str, str]) -> TableCodec:
    pos = {"partition_key": 0, "clustering": 0}
    out = []
    for name, typ, kind in cols:
        out.append(Column(name, parse_cql_type(typ, lambda _: UT), kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    order = tuple("asc" for c in out if c.kind == "clustering")
    sch = TableSchema(keyspace="ks", name="t", columns=tuple(out), clustering_order=order)
    main, static = layouts_for(sch, "ks", "t")
    return TableCodec(sch.columns, main, static)


SIMPLE = codec(
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("s", "text", "static"),
    ("v", "text", "regular"),
    ("w", "int", "regular"),
)


def ev(op: Op, key: dict[str, Any], *, seq: int = 0, wt: int | None = None, **kw: Any) -> ChangeEvent:
    wt = next(_clock) if wt is None else wt
    t = uuid.UUID(int=(wt << 64) | 0x8000000000000000)
    pos = Position(generation=0, stream_id=b"\x01" * 16, time=t)
    return ChangeEvent(table="ks.t", pos=pos, batch_seq=seq, op=op, write_time_us=wt, key=key, **kw)


K = {"pk": 1, "ck": 1}


def test_changes_to_one_key_fold_into_its_final_state() -> None:
    batch = [
        ev(Op.INSERT, K, values={"v": "a", "w": 1}),
        ev(Op.UPDATE, K, values={"w": 2}),
        ev(Op.UPDATE, K, deleted=frozenset({"v"})),
        ev(Op.UPDATE, {"pk": 1, "ck": 2}, values={"w": 9}),
    ]
    segments, bad = fold(SIMPLE, batch)
    assert bad == {}
    (seg,) = segments
    plan = seg.plans[(False, (1, 1))]
    assert plan.sets == {"v": None, "w": 2}
    assert plan.marker and plan.nulled and not plan.delete and not plan.replace
    assert plan.write_time == batch[2].write_time_us and plan.events == 3
    assert seg.plans[(False, (1, 2))].sets == {"w": 9}


def test_delete_then_write_starts_from_an_empty_row() -> None:
    batch = [ev(Op.INSERT, K, values={"v": "a"}), ev(Op.ROW_DELETE, K), ev(Op.UPDATE, K, values={"w": 3})]
    (seg,), _ = fold(SIMPLE, batch)
    plan = seg.plans[(False, (1, 1))]
    assert (plan.replace, plan.marker, plan.sets) == (True, False, {"w": 3})
    assert seg.deletes == [1]
    (seg,), _ = fold(SIMPLE, batch[:2])
    assert seg.plans[(False, (1, 1))].delete


def test_partition_and_range_deletes_cut_segments() -> None:
    rng = RangeBound(start=(1,), start_inclusive=True, end=(), end_inclusive=True)
    batch = [
        ev(Op.INSERT, K, values={"v": "a"}),
        ev(Op.RANGE_DELETE, {"pk": 1}, range=rng),
        ev(Op.INSERT, K, values={"v": "b"}),
        ev(Op.PARTITION_DELETE, {"pk": 1}),
    ]
    segments, bad = fold(SIMPLE, batch)
    assert bad == {}
    assert [(list(s.plans), s.breaker, s.deletes) for s in segments] == [
        ([(False, (1, 1))], 1, [1]),
        ([(False, (1, 1))], 3, [3]),
    ]


def test_write_time_ties_keep_the_later_batch_seq() -> None:
    (seg,), _ = fold(SIMPLE, [ev(Op.UPDATE, K, wt=5, seq=0, values={"v": "x"}),
                              ev(Op.UPDATE, K, wt=5, seq=1, values={"w": 1})])  # fmt: skip
    plan = seg.plans[(False, (1, 1))]
    assert (plan.write_time, plan.seq, plan.sets) == (5, 1, {"v": "x", "w": 1})


def test_static_changes_go_to_the_static_plan() -> None:
    batch = [
        ev(Op.UPDATE, {"pk": 1}, static=True, values={"s": "S"}),
        # A clustered change that also carries a static cell is split between the two tables.
        ev(Op.INSERT, K, values={"s": "T", "v": "a"}),
    ]
    (seg,), bad = fold(SIMPLE, batch)
    assert bad == {}
    assert seg.plans[(True, (1,))].sets == {"s": "T"} and not seg.plans[(True, (1,))].marker
    assert seg.plans[(False, (1, 1))].sets == {"v": "a"} and seg.plans[(False, (1, 1))].marker


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev(Op.INSERT, K, values={"v": "a\x00b"}), "'v': text contains NUL"),
        (ev(Op.INSERT, {"pk": 1, "ck": None}, values={"v": "a"}), "key column 'ck' is missing"),
        (ev(Op.INSERT, {"pk": 1}, values={"v": "a"}), "key column 'ck' is missing"),
        (ev(Op.UPDATE, K, values={"nope": 1}), "column 'nope' is not in the target table"),
        (ev(Op.UPDATE, K, deleted=frozenset({"nope"})), "column 'nope' is not in the target table"),
        (ev(Op.UPDATE, K, deleted_elements={"v": ["x"]}), "not a non-frozen collection"),
        (ev(Op.UPDATE, {"pk": 1}, static=True, values={"v": "a"}), "static-row change carries regular"),
        (ev(Op.PREIMAGE, K), "PREIMAGE cannot be applied"),
        (ev(Op.RANGE_DELETE, {"pk": 1}), "range delete without a range"),
        (ev(Op.ROW_DELETE, {"pk": 1}, static=True), "row delete of a static row"),
        (
            ev(
                Op.RANGE_DELETE,
                {"pk": 1},
                range=RangeBound(start=(1, 2), start_inclusive=True, end=(), end_inclusive=True),
            ),
            "longer than the clustering key",
        ),
    ],
)
def test_events_postgresql_cannot_store_are_named_with_a_reason(event: ChangeEvent, reason: str) -> None:
    good = ev(Op.INSERT, {"pk": 2, "ck": 2}, values={"v": "fine"})
    _, bad = fold(SIMPLE, [good, event, good])
    assert list(bad) == [1]
    assert reason in bad[1]


def test_nul_is_found_inside_nested_values_and_map_keys() -> None:
    c = codec(("pk", "text", "partition_key"), ("m", "map<text, int>", "regular"),
              ("f", "frozen<list<tuple<int, text>>>", "regular"), ("n", "int", "regular"))  # fmt: skip
    assert c.cols["n"].nul is None and not c.cols["n"].text
    _, bad = fold(c, [
        ev(Op.UPDATE, {"pk": "k"}, values={"m": {"a\x00": 1}}),
        ev(Op.UPDATE, {"pk": "k"}, values={"f": [(1, "x"), (2, "\x00")]}),
        ev(Op.UPDATE, {"pk": "k\x00"}, values={"n": 1}),
        ev(Op.UPDATE, {"pk": "k"}, values={"m": {"a": 1}, "f": [(1, "x")]}),
    ])  # fmt: skip
    assert sorted(bad) == [0, 1, 2]


def test_collection_deltas_resolve_against_the_current_value() -> None:
    c = codec(("pk", "int", "partition_key"), ("l", "list<int>", "regular"), ("s", "set<text>", "regular"),
              ("m", "map<int, text>", "regular"), ("u", "ut", "regular"))  # fmt: skip
    k1, k2, k3 = (uuid.UUID(int=(t << 68) | (1 << 76) | 0x8000000000000000) for t in (10, 20, 5))
    (seg,), bad = fold(c, [
        ev(Op.UPDATE, {"pk": 1}, values={"l": {k3: 0}, "s": ["c"], "m": {3: "z"}, "u": {"b": "B"}},
           deleted_elements={"l": [k1], "s": ["a"], "m": [1], "u": ["a"]}),
    ])  # fmt: skip
    assert bad == {}
    plan = seg.plans[(False, (1,))]
    current = {"l": [1, 2], "_cdc_keys_l": [k1, k2], "s": ["a", "b"], "m": {"1": "x", "2": "y"},
               "u": {"a": 1, "b": None}}  # fmt: skip
    resolve(c, plan, current)
    # k3 sorts before k2 by time: a prepend.
    assert plan.sets == {
        "l": [0, 2], "_cdc_keys_l": [k3, k2], "s": ["b", "c"], "m": {"2": "y", "3": "z"}, "u": {"a": None, "b": "B"},
    }  # fmt: skip


def test_overwrite_clears_before_adding_and_empty_becomes_null() -> None:
    c = codec(("pk", "int", "partition_key"), ("s", "set<int>", "regular"), ("u", "ut", "regular"))
    (seg,), _ = fold(c, [
        ev(Op.UPDATE, {"pk": 1}, values={"s": [7]}, deleted=frozenset({"s"})),
        ev(Op.UPDATE, {"pk": 1}, deleted_elements={"u": ["a", "b"]}),
    ])  # fmt: skip
    plan = seg.plans[(False, (1,))]
    assert plan.colls["s"].cleared and not plan.colls["u"].cleared
    resolve(c, plan, {"s": [1, 2], "u": {"a": 1, "b": "x"}})
    assert plan.sets == {"s": [7], "u": None}
    assert plan.nulled


def test_unknown_udt_field_is_a_bad_row() -> None:
    c = codec(("pk", "int", "partition_key"), ("u", "ut", "regular"))
    _, bad = fold(c, [ev(Op.UPDATE, {"pk": 1}, deleted_elements={"u": ["zz"]})])
    assert "no field(s) ['zz']" in bad[0]


def test_rows_scylla_removed_itself_are_deletes() -> None:
    """ops -3/-4 (per-row TTL expiry) remove rows like user deletes."""
    segments, bad = fold(SIMPLE, [ev(Op.SERVICE_ROW_DELETE, K), ev(Op.SERVICE_PARTITION_DELETE, {"pk": 2})])
    assert bad == {}
    assert segments[0].plans[(False, (1, 1))].delete
    assert (segments[0].breaker, segments[0].deletes) == (1, [0, 1])


def test_soft_deletes_keep_rows_the_batch_wrote() -> None:
    batch = [ev(Op.INSERT, K, values={"v": "a"}), ev(Op.ROW_DELETE, K), ev(Op.ROW_DELETE, {"pk": 1, "ck": 2})]
    (seg,), _ = fold(SIMPLE, batch, soft=True)
    kept, gone = seg.plans[(False, (1, 1))], seg.plans[(False, (1, 2))]
    assert (kept.delete, kept.keep, kept.sets, kept.marker) == (True, True, {"v": "a"}, True)
    assert (gone.delete, gone.keep) == (True, False)
    (seg,), _ = fold(SIMPLE, batch)  # hard/tombstone: nothing to keep
    assert not seg.plans[(False, (1, 1))].keep and seg.plans[(False, (1, 1))].sets == {}
