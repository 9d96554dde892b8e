"""clickhouse/fold.py: a batch of events folded into full rows in memory (no server): version guard, partial
updates, deletes of every kind, blind full-row INSERTs, and the bulk path equal to the general one."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdcd.events import ChangeEvent, Op, Position, RangeBound
from cdcd.schema import CdcOptions, Column, TableSchema, parse_cql_type
from cdcd.sinks.clickhouse.fold import (
    BatchState,
    TableCodec,
    blind_keys,
    bulk_columns,
    fresh_columns,
    prepare,
)
from cdcd.sinks.clickhouse.sql import DELETED, IS_DELETED, MARKER, VERSION, layouts_for

_seq = itertools.count()


def schema(cols: list[tuple[str, str, str]], order: tuple[str, ...] = ()) -> TableSchema:
    pos = {"partition_key": 0, "clustering": 0}
    out = []
    for name, typ, kind in cols:
        out.append(Column(name, parse_cql_type(typ), kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    if not order:
        order = tuple("asc" for c in out if c.kind == "clustering")
    return TableSchema(
        keyspace="ks", name="t", columns=tuple(out), clustering_order=order, cdc=CdcOptions(enabled=True)
    )


SIMPLE = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("v", "text", "regular"),
                 ("n", "int", "regular")])  # fmt: skip


def ev(op: Op, key: dict[str, Any], wt: int, **kw: Any) -> ChangeEvent:
    t = uuid.UUID(int=(wt << 64) | 0x8000000000000000 | next(_seq))
    pos = Position(generation=0, stream_id=b"\x01" * 16, time=t)
    return ChangeEvent(table="ks.t", pos=pos, batch_seq=0, op=op, write_time_us=wt, key=key, **kw)


def codec(sch: TableSchema = SIMPLE) -> TableCodec:
    main, static = layouts_for(sch, "db", "t")
    return TableCodec(sch, main, static)


def fold(c: TableCodec, events: list[ChangeEvent], stored: list[dict[str, Any]] = (), strategy: str = "hard",  # type: ignore[assignment]
         blind: bool = True) -> tuple[BatchState, list[dict[str, Any]]]:  # fmt: skip
    prepared, bad = prepare(c, events)
    assert not bad, bad
    state = BatchState(c, strategy)
    if blind:
        state.blind = blind_keys(c, prepared)
    state.load_records(False, c.main, stored)
    for p in prepared:
        state.apply(p)
    return state, [rec for _, rec in state.output(False)]


def stored_row(pk: int, ck: int, v: str | None, n: int | None, version: int, **meta: int) -> dict[str, Any]:
    rec = {"pk": pk, "ck": ck, "v": v, "n": n, VERSION: version, IS_DELETED: 0, DELETED: 0, MARKER: 1}
    rec.update(meta)
    return rec


def test_partial_update_merges_with_the_stored_row() -> None:
    state, out = fold(
        codec(), [ev(Op.UPDATE, {"pk": 1, "ck": 1}, 20, values={"n": 2})], [stored_row(1, 1, "a", 1, 10)]
    )
    assert [(r["v"], r["n"], r[VERSION], r[MARKER]) for r in out] == [("a", 2, 20, 1)]
    assert (state.applied, state.skipped) == (1, 0)


def test_version_guard_skips_stale_events_and_deletes_win_ties() -> None:
    c = codec()
    state, out = fold(
        c, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, 10, values={"n": 9})], [stored_row(1, 1, "a", 1, 10)]
    )
    assert out == [] and state.skipped == 1
    state, out = fold(c, [ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}, 10)], [stored_row(1, 1, "a", 1, 10)])
    assert [r[IS_DELETED] for r in out] == [1] and state.applied == 1


def test_delete_then_write_in_one_batch_starts_empty() -> None:
    events = [
        ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}, 20),
        ev(Op.UPDATE, {"pk": 1, "ck": 1}, 30, values={"n": 3}),
    ]
    _, out = fold(codec(), events, [stored_row(1, 1, "a", 1, 10)])
    assert [(r["v"], r["n"], r[MARKER], r[IS_DELETED]) for r in out] == [(None, 3, 0, 0)]


def test_soft_delete_keeps_the_values_and_flags_the_row() -> None:
    _, out = fold(
        codec(), [ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}, 20)], [stored_row(1, 1, "a", 1, 10)], "soft"
    )
    assert [(r["v"], r[DELETED], r["_cdc_deleted_at"], r[IS_DELETED]) for r in out] == [("a", 1, 20, 0)]


def test_deleting_an_absent_row_writes_nothing() -> None:
    _, out = fold(codec(), [ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}, 20)])
    assert out == []


def test_a_blind_full_insert_then_delete_still_hides_the_stored_row() -> None:
    c = codec()
    events = [
        ev(Op.INSERT, {"pk": 1, "ck": 1}, 20, values={"v": "b", "n": 2}),  # full row: not read back
        ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}, 30),
    ]
    prepared, _ = prepare(c, events)
    assert prepared[0].full and blind_keys(c, prepared) == {(1, 1)}
    _, out = fold(c, events)
    assert [(r[IS_DELETED], r[VERSION]) for r in out] == [(1, 30)]  # the marker is written anyway
    _, out = fold(c, events, strategy="soft")
    assert [(r["v"], r[DELETED]) for r in out] == [("b", 1)]


def test_partial_insert_is_not_blind() -> None:
    c = codec()
    prepared, _ = prepare(c, [ev(Op.INSERT, {"pk": 1, "ck": 1}, 20, values={"v": "b"})])
    assert not prepared[0].full and blind_keys(c, prepared) == set()
    prepared, _ = prepare(
        c, [ev(Op.INSERT, {"pk": 1, "ck": 1}, 20, values={"v": "b"}, deleted=frozenset({"n"}))]
    )
    assert prepared[0].full


def test_range_delete_follows_clustering_order_with_desc_columns() -> None:
    sch = schema([("pk", "int", "partition_key"), ("a", "int", "clustering"), ("b", "int", "clustering"),
                  ("n", "int", "regular")], order=("asc", "desc"))  # fmt: skip
    c = codec(sch)
    stored = [{"pk": 1, "a": a, "b": b, "n": 0, VERSION: 10, IS_DELETED: 0, DELETED: 0, MARKER: 1}
              for a in range(3) for b in range(3)]  # fmt: skip
    # a = 1 AND b <= 1: with b DESC that is from (1, 1) to the end of a = 1.
    rng = RangeBound(start=(1, 1), start_inclusive=True, end=(1,), end_inclusive=True)
    _, out = fold(c, [ev(Op.RANGE_DELETE, {"pk": 1}, 20, range=rng)], stored)
    assert sorted((r["a"], r["b"]) for r in out if r[IS_DELETED]) == [(1, 0), (1, 1)]
    _, out = fold(c, [ev(Op.PARTITION_DELETE, {"pk": 1}, 20)], stored)
    assert len(out) == 9 and all(r[IS_DELETED] for r in out)


def test_unknown_columns_and_bad_values_are_bad_rows() -> None:
    _, bad = prepare(codec(), [
        ev(Op.INSERT, {"pk": 1, "ck": 1}, 1, values={"zz": 1}),
        ev(Op.INSERT, {"pk": 1, "ck": 2}, 1, values={"n": "x"}),
        ev(Op.INSERT, {"pk": 1}, 1, values={"n": 1}),
        ev(Op.INSERT, {"pk": 1, "ck": 3}, 1, values={"n": 1}),
    ])  # fmt: skip
    assert sorted(bad) == [0, 1, 2]
    assert "not in the target table" in bad[0] and "'n'" in bad[1] and "missing" in bad[2]


COLL = schema([("pk", "int", "partition_key"), ("v", "text", "regular"), ("l", "list<int>", "regular"),
               ("s", "set<text>", "regular"), ("f", "frozen<list<int>>", "regular")])  # fmt: skip


@st.composite
def full_inserts(draw: Any) -> list[ChangeEvent]:
    keys = draw(st.lists(st.integers(0, 50), unique=True, min_size=1, max_size=8))
    out = []
    for i, k in enumerate(keys):
        cells = draw(st.lists(st.integers(-5, 5), max_size=3))
        values: dict[str, Any] = {
            "v": draw(st.none() | st.text(max_size=3)),
            "l": {
                uuid.UUID(int=((i * 10 + j + 1) << 80) | (1 << 76) | 0x8000000000000000): x
                for j, x in enumerate(cells)
            },
            "s": draw(st.lists(st.sampled_from("abc"), max_size=3)),
            "f": draw(st.lists(st.integers(-5, 5), max_size=3)),
        }
        out.append(ev(Op.INSERT, {"pk": k}, 100 + i, values=values, deleted=frozenset({"l", "s"})))
    return out


@settings(max_examples=60, deadline=None)
@given(full_inserts())
def test_bulk_path_gives_the_rows_of_the_general_fold(events: list[ChangeEvent]) -> None:
    c = codec(COLL)
    prepared, _ = prepare(c, events)
    columns = fresh_columns(c, prepared)
    assert columns is not None
    _, out = fold(c, events)
    names = list(c.main.column_types())
    assert [list(r[n] for n in names) for r in out] == [
        list(row) for row in zip(*(columns[n] for n in names), strict=True)
    ]


def test_bulk_path_refuses_repeated_keys_and_partial_rows() -> None:
    c = codec(COLL)
    both = [ev(Op.INSERT, {"pk": 1}, 1, values={"v": "a", "f": []}, deleted=frozenset({"l", "s"}))] * 2
    assert fresh_columns(c, prepare(c, both)[0]) is None
    assert fresh_columns(c, prepare(c, [ev(Op.INSERT, {"pk": 1}, 1, values={"v": "a"})])[0]) is None


def test_columns_of_the_other_row_kind_are_bad_rows() -> None:
    sch = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("st", "int", "static"),
                  ("n", "int", "regular")])  # fmt: skip
    _, bad = prepare(codec(sch), [
        ev(Op.UPDATE, {"pk": 1, "ck": 1}, 1, values={"st": 1}),
        ev(Op.UPDATE, {"pk": 1}, 1, static=True, values={"n": 1}),
        ev(Op.UPDATE, {"pk": 1, "ck": 1}, 1, deleted=frozenset({"st"})),
        ev(Op.UPDATE, {"pk": 1}, 1, static=True, values={"st": 2}),
    ])  # fmt: skip
    assert sorted(bad) == [0, 1, 2]
    assert "are static" in bad[0] and "are not static" in bad[1]


BULK = schema([("pk", "bigint", "partition_key"), ("ck", "text", "clustering"), ("t", "text", "regular"),
               ("i", "smallint", "regular"), ("d", "double", "regular"), ("f", "float", "regular"),
               ("ts", "timestamp", "regular"), ("u", "uuid", "regular"), ("dec", "decimal", "regular"),
               ("fl", "frozen<list<int>>", "regular")])  # fmt: skip
_UTC2 = dt.timezone(dt.timedelta(hours=2))


GOOD: dict[str, Any] = {
    "t": st.none() | st.text(max_size=3),
    "i": st.none() | st.integers(-(2**15), 2**15 - 1),
    "d": st.none() | st.floats(allow_nan=False) | st.integers(-5, 5),
    "f": st.none() | st.sampled_from([1.5, -2.0]),
    "ts": st.none() | st.sampled_from([dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 3, tzinfo=_UTC2),
                                       dt.datetime(2024, 1, 1)]),
    "u": st.none() | st.uuids(),
    "dec": st.none() | st.sampled_from([decimal.Decimal("1.10"), decimal.Decimal("-1E+40")]),
    "fl": st.none() | st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2),
}  # fmt: skip
BAD: dict[str, Any] = {
    "t": b"x", "i": 2**15, "d": "1", "f": 1e39, "ts": dt.date(2024, 1, 1), "u": "u", "dec": decimal.Decimal("NaN"),
    "fl": [1, None],
}  # fmt: skip


@st.composite
def bulk_batches(draw: Any) -> list[ChangeEvent]:
    """Mostly valid bulk INSERTs; now and then one bad value, a repeated key or a null key."""
    out = []
    for i in range(draw(st.integers(1, 6))):
        values = {c: draw(s) for c, s in GOOD.items()}
        if draw(st.integers(0, 9)) == 0:
            col = draw(st.sampled_from(sorted(BAD)))
            values[col] = BAD[col]
        pk = None if draw(st.integers(0, 30)) == 0 else draw(st.integers(-(2**63), 2**63 - 1))
        ck = draw(st.sampled_from("abc")) if draw(st.booleans()) else f"k{i}"
        out.append(ev(Op.INSERT, {"pk": pk, "ck": ck}, 100 + i, values=values))
    return out


@settings(max_examples=100, deadline=None)
@given(bulk_batches())
def test_column_by_column_bulk_path_equals_the_event_by_event_one(events: list[ChangeEvent]) -> None:
    c = codec(BULK)
    bulk = bulk_columns(c, events)
    prepared, bad = prepare(c, events)
    general = None if bad else fresh_columns(c, prepared)
    assert bulk == general


def test_bulk_path_takes_only_plain_full_inserts() -> None:
    c = codec(SIMPLE)
    full = {"v": "a", "n": 1}
    assert bulk_columns(c, [ev(Op.INSERT, {"pk": 1, "ck": 1}, 1, values=full)]) is not None
    assert bulk_columns(c, [ev(Op.INSERT, {"pk": 1, "ck": 1}, 1, values={"v": "a"})]) is None
    assert bulk_columns(c, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, 1, values=full)]) is None
    assert bulk_columns(c, [ev(Op.INSERT, {"pk": 1, "ck": 1}, 1, values=full)] * 2) is None
    assert bulk_columns(codec(COLL), [ev(Op.INSERT, {"pk": 1}, 1, values={"v": "a", "f": []},
                                         deleted=frozenset({"l", "s"}))]) is None  # fmt: skip
