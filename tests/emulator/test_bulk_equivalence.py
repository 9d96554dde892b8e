"""The CDC fast path (``cdc_fast.fast_transform``) produces exactly what the general path does.

Hypothesis draws single base partition mutations -- the shapes the fast path takes (one-row
upserts of atomic columns, row deletes, partition deletes) and near misses it must hand over
(mixed timestamps or TTLs, dead markers, collections, static cells, several rows, range
tombstones, unknown columns, images) -- for several table/option shapes. Two ``CdcLog``s with the
same seeded rng, clock and generations transform the same mutation, one with ``fast_path`` off; the
log mutations must be equal including cell insertion order and value types (``Op`` members vs
ints), both must raise the same error, and both rngs must end in the same state.
``StreamRouter.stream_for`` is checked against ``Generations.stream_for`` the same way, the log
clustering keys against the catalog's, and ``bulk_load``'s direct storage writes against its
mutation route through the general CDC path (two engines on one frozen clock, same streams and rng),
and SELECT's fused page scan against its generic row loop.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scylla_emulator import cdc as cdc_module
from tests.scylla_emulator import engine_select
from tests.scylla_emulator.api import CqlError
from tests.scylla_emulator.bulk import bulk_load
from tests.scylla_emulator.cdc import CdcLog, log_table_def
from tests.scylla_emulator.cdc_fast import StreamRouter
from tests.scylla_emulator.engine import EmulatorEngine, log_ck_key
from tests.scylla_emulator.generations import Generations
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

T = 1_700_000_000_000_000  # µs, "now"


def _table(ck: bool, opts: CdcTableOptions) -> TableDef:
    cols = [ColumnDef("pk", "int", "partition_key", 0)]
    if ck:
        cols += [ColumnDef("ck", "int", "clustering", 0), ColumnDef("ck2", "text", "clustering", 1, "desc")]
        cols.append(ColumnDef("s", "int", "static"))
    cols += [
        ColumnDef("v", "int", "regular"),
        ColumnDef("Zed", "text", "regular"),  # sorts before "v" by UTF-8 bytes
        ColumnDef("é", "bigint", "regular"),  # sorts after ASCII names
        ColumnDef("m", "map<int, int>", "regular"),
    ]
    return TableDef("ks", "t", cols, cdc=opts)


OPTIONS = st.sampled_from(
    [
        CdcTableOptions(enabled=True),
        CdcTableOptions(enabled=True, ttl=0),
        CdcTableOptions(enabled=True, ttl=600),
        CdcTableOptions(enabled=True, delta="keys"),
        CdcTableOptions(enabled=True, preimage="true"),
        CdcTableOptions(enabled=True, postimage=True),
    ]
)
TS = st.sampled_from([T, T - 1, T - 2_000_000, T + 1_000_000])
TTL = st.sampled_from([None, 0, 5, 100])
VALUES = {"v": st.integers(-3, 3), "Zed": st.text(max_size=3), "é": st.integers(), "s": st.integers(0, 3)}


@st.composite
def atomic(draw: Any, name: str, ts: int, ttl: int | None, mixed: bool) -> AtomicCell:
    if mixed:
        ts, ttl = draw(TS), draw(TTL)
    if draw(st.integers(0, 4)) == 0:
        return AtomicCell(ts, None, live=False, ttl=draw(TTL) if mixed else None)
    return AtomicCell(ts, draw(VALUES[name]), ttl=ttl)


@st.composite
def mutations(draw: Any, ck: bool) -> PartitionMutation:
    pk = (draw(st.integers(-5, 5)),)
    pm = PartitionMutation("ks", "t", pk, token=draw(st.integers(-(2**63) + 1, 2**63 - 1)))
    pm.system_originated = draw(st.booleans())
    kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "row_delete", "partition_delete", "odd"]))
    ts, ttl = draw(TS), draw(TTL)
    mixed = draw(st.integers(0, 5)) == 0

    def clustering() -> tuple[Any, ...]:
        return (draw(st.integers(0, 3)), draw(st.text(max_size=2))) if ck else ()

    if kind == "partition_delete":
        pm.partition_tombstone_ts = ts
    elif kind == "row_delete":
        pm.rows.append(RowMutation(clustering(), row_tombstone_ts=ts))
    else:
        row = RowMutation(clustering())
        if draw(st.booleans()):
            row.marker = AtomicCell(draw(TS) if mixed else ts, ttl=ttl, live=draw(st.integers(0, 9)) > 0)
        for name in draw(st.lists(st.sampled_from(["v", "Zed", "é"]), unique=True)):
            row.cells[name] = draw(atomic(name, ts, ttl, mixed))
        pm.rows.append(row)
    if kind == "odd":  # near misses of the fast path
        extra = draw(
            st.sampled_from(["coll", "static", "rows", "range", "unknown", "ptomb", "rtomb", "none"])
        )
        row = pm.rows[0]
        if extra == "coll":
            row.cells["m"] = CollectionMutation(ts - 1, [(1, AtomicCell(ts, 2, ttl=ttl))])
        elif extra == "static" and ck:
            pm.static_row = RowMutation(None, cells={"s": AtomicCell(ts, 1)})
        elif extra == "rows" and ck:
            pm.rows.append(RowMutation((9, "z"), marker=AtomicCell(ts), cells={"v": AtomicCell(ts, 1)}))
        elif extra == "range" and ck:
            pm.range_tombstones.append(RangeTombstone((1,), True, (2,), False, ts))
        elif extra == "unknown":
            row.cells["nope"] = AtomicCell(ts, 1)
        elif extra == "ptomb":
            pm.partition_tombstone_ts = ts
        elif extra == "rtomb":
            row.row_tombstone_ts = ts
        else:
            row.marker, row.cells = None, {}
    return pm


def _cdc(now: int) -> CdcLog:
    gens = Generations(now_ms=lambda: now // 1000, first_start_ms=T // 1000 - 60_000, rng=random.Random(1))
    gens.new_generation(500)  # a second generation starting at now + 0.5 s
    return CdcLog(gens, lambda: now, rng=random.Random(7))


def _outcome(cdc: CdcLog, base: TableDef, log: TableDef, pm: PartitionMutation) -> Any:
    def read_row(_b: TableDef, pk: tuple[Any, ...], ck: tuple[Any, ...] | None) -> dict[str, Any] | None:
        return {"pk": pk[0], "v": 1, "s": 2} if ck is None else {"pk": pk[0], "v": 1, "Zed": "a"}

    try:
        muts = cdc.transform(base, log, [pm], read_row)
    except (CqlError, ValueError) as e:
        return ("error", type(e), str(e))
    out = []
    for m in muts:
        rows = [
            (r.clustering, r.marker, r.row_tombstone_ts, [(k, c, type(c.value)) for k, c in r.cells.items()])
            for r in m.rows
        ]
        out.append((m.keyspace, m.table, m.partition_key, m.token, m.partition_tombstone_ts, rows))
    return out


@settings(max_examples=250, deadline=None)
@given(opts=OPTIONS, ck=st.booleans(), data=st.data(), now=st.sampled_from([T, T + 10_000_000]))
def test_fast_path_equals_general_path(opts: CdcTableOptions, ck: bool, data: Any, now: int) -> None:
    base = _table(ck, opts)
    log = log_table_def(base)
    pm = data.draw(mutations(ck))
    fast, slow = _cdc(now), _cdc(now)
    slow.fast_path = False
    assert _outcome(fast, base, log, pm) == _outcome(slow, base, log, pm)
    assert fast.rng.getstate() == slow.rng.getstate()


@pytest.mark.parametrize(
    "pm",
    [
        PartitionMutation("ks", "t", (1,), 5, rows=[RowMutation((1, "a"), AtomicCell(T), cells={"v": AtomicCell(T, 1)})]),
        PartitionMutation("ks", "t", (1,), 5, rows=[RowMutation((1, "a"), row_tombstone_ts=T)]),
        PartitionMutation("ks", "t", (1,), 5, partition_tombstone_ts=T),
        PartitionMutation("ks", "t", (1,), 5, rows=[RowMutation((1, "a"), cells={"Zed": AtomicCell(T, None, False)})]),
    ],
)  # fmt: skip
def test_fast_path_is_taken_for_the_common_shapes(pm: PartitionMutation, monkeypatch: Any) -> None:
    """The shapes bulk loads produce do take the fast path (the general one is never consulted)."""
    base = _table(True, CdcTableOptions(enabled=True))
    slow = _cdc(T)
    slow.fast_path = False
    expected = slow.transform(base, log_table_def(base), [pm], lambda *_a: None)

    def general(*_a: Any) -> None:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(cdc_module, "_Transformer", general)
    out = _cdc(T).transform(base, log_table_def(base), [pm], lambda *_a: None)
    assert len(out) == 1 and len(out[0].rows) == 1
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(
    token=st.integers(-(2**63), 2**63 - 1),
    offset=st.integers(-70_000_000, 8_000_000),
    vnodes=st.integers(1, 5),
    shards=st.integers(1, 3),
)
def test_stream_router_equals_generations(token: int, offset: int, vnodes: int, shards: int) -> None:
    gens = Generations(
        vnodes=vnodes,
        shards=shards,
        now_ms=lambda: T // 1000,
        first_start_ms=T // 1000 - 60_000,
        rng=random.Random(3),
    )
    gens.new_generation(-2_000)
    gens.new_generation(1_000, vnodes + 1)
    router = StreamRouter(gens)

    def call(f: Any) -> Any:
        try:
            return f(token, T + offset)
        except CqlError as e:
            return ("error", e.code, str(e))

    assert call(router.stream_for) == call(gens.stream_for)
    assert call(router.stream_for) == call(gens.stream_for)  # memoized


_ENGINE: list[EmulatorEngine] = []


def _log_rt() -> Any:
    if not _ENGINE:
        engine = EmulatorEngine()
        engine.execute_decoded(
            "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        engine.execute_decoded("CREATE TABLE ks.t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
        _ENGINE.append(engine)
    return _ENGINE[0].table("ks", "t_scylla_cdc_log")


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, 2**128 - 1), seq=st.integers(-(2**31), 2**31 - 1))
def test_log_clustering_key_equals_the_catalogs(value: int, seq: int) -> None:
    rt = _log_rt()
    ck = (uuid.UUID(int=value), seq)
    assert log_ck_key(rt)(ck) == rt.ck_key(ck)
    assert log_ck_key(rt)((ck[0],)) == rt.ck_key((ck[0],))


# ---------------------------------------------------------------------------- bulk_load direct path
FIXED_NOW = 1_800_000_000.0  # s; both engines run on this frozen clock

SHAPES = {
    "plain": ("pk int, ck int, v int, t text, PRIMARY KEY (pk, ck)", ""),
    "cdc": ("pk int, ck int, v int, t text, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true}"),
    "cdc_ttl0": ("pk int, ck int, v int, t text, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true, 'ttl': 0}"),
    "cdc_keys": ("pk int, ck int, v int, t text, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true, 'delta': 'keys'}"),
    "cdc_pre": ("pk int, ck int, v int, t text, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true, 'preimage': true}"),
    "cdc_static": ("pk int, ck int, v int, t text, s int static, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true}"),
    "cdc_coll": ("pk int, ck int, v int, t text, m map<int, int>, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true}"),
    "cdc_nock": ("pk int, v int, t text, PRIMARY KEY (pk)", " WITH cdc = {'enabled': true}"),
    "cdc_ts": ("pk int, ck timestamp, v int, t text, PRIMARY KEY (pk, ck)", " WITH cdc = {'enabled': true}"),
}  # fmt: skip


def _engine(shape: str, shared: EmulatorEngine | None) -> EmulatorEngine:
    engine = EmulatorEngine(clock=lambda: FIXED_NOW)
    if shared is not None:  # same streams, same cdc$time bits, same list cell keys
        engine.generations = shared.generations
        engine.writer._node = shared.writer._node
    engine.cdc = CdcLog(engine.generations, engine.now_us, rng=random.Random(11))
    engine.execute_decoded(
        "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    cols, opts = SHAPES[shape]
    engine.execute_decoded(f"CREATE TABLE ks.t ({cols}){opts}")
    return engine


def _cell(c: Any) -> Any:
    if isinstance(c, AtomicCell):
        return (c.ts, c.value, type(c.value), c.live, c.ttl, c.expiry)
    return ("coll", c.tomb, [(k, _cell(x)) for k, x in c.cells.items()])


def _row(r: Any) -> Any:
    if r is None:
        return None
    return (
        r.ck,
        r.tomb,
        None if r.marker is None else _cell(r.marker),
        [(n, _cell(c)) for n, c in r.cells.items()],
    )


def _dump(engine: EmulatorEngine, name: str) -> Any:
    rt = engine.catalog.find_table("ks", name)
    if rt is None:
        return None
    out = []
    for tok, pkb in rt.store.order:
        p = rt.store.partitions[pkb]
        assert len(p.rowlist) == len(p.keys) == len(p.rows)
        assert all(r is p.rows[k] for k, r in zip(p.keys, p.rowlist, strict=True))
        rows = [(k, _row(p.rows[k])) for k in p.keys]
        out.append((tok, pkb, p.pk, p.tomb, _row(p.static), rows, list(p.rts)))
    return out


@st.composite
def loads(draw: Any, shape: str) -> list[tuple[str, int | None, list[dict[str, Any]]]]:
    cols = ["v", "t"] + (["s"] if shape == "cdc_static" else []) + (["m"] if shape == "cdc_coll" else [])
    values = {"v": st.integers(-3, 3), "t": st.text(max_size=2), "s": st.integers(0, 2),
              "m": st.dictionaries(st.integers(0, 2), st.integers(0, 2), max_size=2)}  # fmt: skip
    out = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "update", "delete"]))
        ttl = draw(st.sampled_from([None, None, 0, 50]))
        rows = []
        for _ in range(draw(st.integers(1, 6))):
            row: dict[str, Any] = {"pk": draw(st.integers(0, 2))}
            if shape != "cdc_nock" and (op != "delete" or draw(st.booleans())):
                ck = draw(st.integers(0, 3))
                row["ck"] = 1_700_000_000_000 + ck if shape == "cdc_ts" else ck
            if op != "delete":
                for c in draw(st.lists(st.sampled_from(cols), unique=True)):
                    row[c] = draw(st.one_of(st.none(), values[c]))
            rows.append(row)
        out.append((op, ttl, rows))
    return out


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from(sorted(SHAPES)), data=st.data())
def test_bulk_direct_path_stores_what_the_mutation_path_stores(shape: str, data: Any) -> None:
    """bulk_load's direct writes == its mutation route through the general CDC path, cell by cell."""
    ref = _engine(shape, None)
    ref.cdc.fast_path = False  # type: ignore[union-attr]
    fast = _engine(shape, ref)
    for op, ttl, rows in data.draw(loads(shape)):
        results = []
        for engine, direct in ((fast, True), (ref, False)):
            try:
                results.append(bulk_load(engine, "ks.t", rows, op=op, ttl=ttl, direct=direct))  # type: ignore[arg-type]
            except CqlError as e:
                results.append(("error", str(e)))
        assert results[0] == results[1]
    assert _dump(fast, "t") == _dump(ref, "t")
    assert _dump(fast, "t_scylla_cdc_log") == _dump(ref, "t_scylla_cdc_log")
    assert fast.cdc.rng.getstate() == ref.cdc.rng.getstate()  # type: ignore[union-attr]


def test_bulk_direct_path_is_taken_for_plain_changes(monkeypatch: Any) -> None:
    engine = _engine("cdc", None)

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("apply_mutations was called")

    monkeypatch.setattr(engine, "apply_mutations", refuse)
    assert bulk_load(engine, "ks.t", [{"pk": 1, "ck": i, "v": i, "t": None} for i in range(5)]) == 5
    assert bulk_load(engine, "ks.t", [{"pk": 1, "ck": 1, "v": 9}], op="update") == 1
    assert bulk_load(engine, "ks.t", [{"pk": 1, "ck": 2}, {"pk": 2}], op="delete") == 2
    assert len(engine.execute_decoded("SELECT * FROM ks.t_scylla_cdc_log").rows) == 8  # type: ignore[union-attr]


# ------------------------------------------------------------------------------- fused SELECT scan
WRITES = st.one_of(
    st.builds(lambda p, c, v, ttl: f"INSERT INTO ks.t (pk, ck, v) VALUES ({p}, {c}, {v}) USING TTL {ttl}",
              st.integers(0, 2), st.integers(0, 5), st.integers(0, 3), st.sampled_from([0, 0, 1, 100])),
    st.builds(lambda p, c: f"INSERT INTO ks.t (pk, ck) VALUES ({p}, {c})", st.integers(0, 2), st.integers(0, 5)),
    st.builds(lambda p, c, v: f"UPDATE ks.t SET w = {v} WHERE pk = {p} AND ck = {c}",
              st.integers(0, 2), st.integers(0, 5), st.sampled_from(["'a'", "null"])),
    st.builds(lambda p, c: f"DELETE v FROM ks.t WHERE pk = {p} AND ck = {c}", st.integers(0, 2), st.integers(0, 5)),
    st.builds(lambda p, c: f"DELETE FROM ks.t WHERE pk = {p} AND ck = {c}", st.integers(0, 2), st.integers(0, 5)),
    st.builds(lambda p, c: f"DELETE FROM ks.t WHERE pk = {p} AND ck > {c}", st.integers(0, 2), st.integers(0, 5)),
    st.builds(lambda p: f"DELETE FROM ks.t WHERE pk = {p}", st.integers(0, 2)),
    st.builds(lambda p, s: f"UPDATE ks.t SET s = {s} WHERE pk = {p}", st.integers(0, 2), st.integers(0, 2)),
)  # fmt: skip
QUERIES = st.sampled_from(
    [
        "SELECT * FROM ks.t",
        "SELECT * FROM ks.t WHERE pk IN (0, 2)",
        "SELECT * FROM ks.t WHERE pk = 1 AND ck > 1 AND ck <= 4",
        "SELECT * FROM ks.t WHERE pk = 1 ORDER BY ck DESC",
        "SELECT pk, ck, v FROM ks.t",
        "SELECT v, w FROM ks.t WHERE pk = 0",
        'SELECT * FROM ks."t_scylla_cdc_log"',
    ]
)


def _pages(engine: EmulatorEngine, q: str, page_size: int | None) -> list[Any]:
    out, state = [], None
    while True:
        res = engine.execute_decoded(q, page_size=page_size, paging_state=state)
        out.append((res.rows, res.paging_state))  # type: ignore[attr-defined]
        state = res.paging_state  # type: ignore[attr-defined]
        if not state:
            return out


@settings(max_examples=40, deadline=None)
@given(writes=st.lists(WRITES, max_size=25), query=QUERIES, page=st.sampled_from([None, 1, 2, 5]),
       advance=st.sampled_from([0, 2]))  # fmt: skip
def test_fused_scan_reads_what_the_row_loop_reads(
    writes: list[str], query: str, page: int | None, advance: int
) -> None:
    engine = EmulatorEngine(clock=lambda: FIXED_NOW)
    engine.execute_decoded(
        "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    engine.execute_decoded(
        "CREATE TABLE ks.t (pk int, ck int, v int, w text, s int static, PRIMARY KEY (pk, ck))"
        " WITH cdc = {'enabled': true}"
    )
    for w in writes:
        engine.execute_decoded(w)
    engine.advance_clock(advance)
    fused = _pages(engine, query, page)
    engine_select.USE_SCAN = False
    try:
        generic = _pages(engine, query, page)
    finally:
        engine_select.USE_SCAN = True
    assert fused == generic


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"pk": st.integers(0, 2), "ck": st.integers(0, 3)},
            optional={
                "v": st.one_of(st.none(), st.integers(-3, 3)),
                "t": st.one_of(st.none(), st.text(max_size=2)),
            },
        ),
        min_size=1,
        max_size=8,
    ),
    op=st.sampled_from(["insert", "update", "delete"]),
    ttl=st.sampled_from([None, 100]),
)
def test_bulk_load_stores_what_cql_statements_store(
    rows: list[dict[str, Any]], op: str, ttl: int | None
) -> None:
    """bulk_load and the equivalent CQL statements (same timestamps) leave the same rows, write
    times and TTLs in the base table."""
    engine = _engine("plain", None)
    engine.execute_decoded("CREATE TABLE ks.u (pk int, ck int, v int, t text, PRIMARY KEY (pk, ck))")
    ts = engine.now_us() - 1000
    bulk_load(engine, "ks.t", rows, op=op, ttl=ttl, start_ts_us=ts)  # type: ignore[arg-type]
    using = f"USING TIMESTAMP {{}}{f' AND TTL {ttl}' if ttl else ''}"
    for i, r in enumerate(rows):
        u = using.format(ts + i)
        if op == "delete":
            engine.execute_decoded(
                f"DELETE FROM ks.u USING TIMESTAMP {ts + i} WHERE pk = ? AND ck = ?", [r["pk"], r["ck"]]
            )
        elif op == "insert":
            cols = list(r)
            marks = ", ".join("?" for _ in cols)
            engine.execute_decoded(
                f"INSERT INTO ks.u ({', '.join(cols)}) VALUES ({marks}) {u}", [r[c] for c in cols]
            )
        else:
            sets = [c for c in r if c not in ("pk", "ck")]
            if sets:
                assign = ", ".join(f"{c} = ?" for c in sets)
                engine.execute_decoded(
                    f"UPDATE ks.u {u} SET {assign} WHERE pk = ? AND ck = ?",
                    [*(r[c] for c in sets), r["pk"], r["ck"]],
                )
    q = "SELECT pk, ck, v, t, writetime(v), writetime(t), ttl(v), ttl(t) FROM ks.{}"
    assert engine.execute_decoded(q.format("t")).rows == engine.execute_decoded(q.format("u")).rows  # type: ignore[union-attr]
