"""Fast synthetic data loading for benchmarks and large tests, without CQL parsing or the protocol.

``bulk_load(engine, "ks.t", rows, op="insert")`` turns each dict into the same
``model.PartitionMutation`` an INSERT/UPDATE/DELETE would produce and sends it through
``EmulatorEngine.apply_mutations`` (so CDC log rows are produced by ``cdc.CdcLog.transform`` exactly
as for CQL writes). Row dicts map column names to Python values (driver value forms); every
primary-key column must be present for insert/update; for delete, a dict with only the partition key
deletes the partition, with the full primary key the row.

Timestamps: the i-th change gets ``start_ts_us + i * step_us`` (default start: the engine clock now),
so with CDC keep ``start_ts_us + n * step_us`` within 5 s of the engine clock (Scylla rejects writes
"from the future") and after the current generation's start.

Speed: with ``chunk=1`` (the default) the common changes -- single-row inserts/updates of atomic
regular columns (one timestamp, one TTL), row deletes and partition deletes, into a table without
CDC or with CDC but without pre/post-images -- skip the intermediate mutation objects: the base row
is merged straight into storage and the log row comes from ``cdc_fast.log_row``, the helper of
``CdcLog.transform``'s own fast path. The result is exactly what ``apply_mutations`` would store
(``tests/emulator/test_bulk_equivalence.py`` compares both, cell by cell); every other row takes
the mutation route. ``direct=False`` forces the mutation route for every row.
"""

from __future__ import annotations

import gc
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cdc_fast import Op, log_row, row_shape
from tests.scylla_emulator.cqltypes_util import normalize
from tests.scylla_emulator.model import AtomicCell, PartitionMutation, RowMutation
from tests.scylla_emulator.storage import Row, apply_row, merge_atomic_row, new_row, partition_of

if TYPE_CHECKING:
    from tests.scylla_emulator.catalog import TableRt
    from tests.scylla_emulator.engine import EmulatorEngine

__all__ = ["bulk_load"]


def bulk_load(
    engine: EmulatorEngine,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    op: Literal["insert", "update", "delete"] = "insert",
    start_ts_us: int | None = None,
    step_us: int = 1,
    ttl: int | None = None,
    chunk: int = 1,
    direct: bool = True,
) -> int:
    """Load ``rows`` as ``op`` changes into ``table`` ("ks.name") and its CDC log; returns the count.

    ``chunk`` > 1 hands that many consecutive changes to CDC in one call, like an UNLOGGED BATCH with
    per-statement timestamps (changes to the same partition within a chunk are merged the way Scylla
    merges a batch); it always takes the mutation route, so the default ``chunk=1`` is the fastest.
    ``direct=False``: no direct storage writes (reference path, same result). Raises CqlError on bad
    rows (unknown column, missing key) and for CDC writes "from the future/past".
    """
    if op not in ("insert", "update", "delete"):
        raise ValueError(f"op must be insert, update or delete, not {op!r}")
    # Millions of long-lived small objects make the cyclic GC rescan the heap over and over.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(engine, table, rows, op, start_ts_us, step_us, ttl, chunk, direct)
    finally:
        gc.freeze()  # the loaded rows live as long as the engine: keep them out of future GC scans
        if was_enabled:
            gc.enable()


# normalize() returns these types' values unchanged (cqltypes_util.normalize)
_IDENTITY = frozenset(
    {"ascii", "bigint", "blob", "boolean", "counter", "decimal", "double", "duration", "float", "int",
     "smallint", "text", "timeuuid", "tinyint", "uuid", "varchar", "varint"}
)  # fmt: skip


# single-column partition keys whose equal values of this exact Python type serialize identically
_CACHEABLE: dict[str, type] = {"int": int, "bigint": int, "smallint": int, "tinyint": int, "varint": int,
                               "text": str, "varchar": str, "ascii": str, "uuid": uuid.UUID, "timeuuid": uuid.UUID}  # fmt: skip


_UUID = uuid.UUID
_new_uuid = uuid.UUID.__new__
_setattr = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_M64 = (1 << 64) - 1
_X80 = 0x8080808080808080


class _Direct:
    """Writes one simple change straight into storage (see the module docstring)."""

    def __init__(self, engine: EmulatorEngine, rt: TableRt, ttl: int | None) -> None:
        self.engine = engine
        self.rt = rt
        self.store = rt.store
        self.ck_key = rt.ck_key
        self.ttl = ttl
        self.plan: Any = None
        d = rt.d
        self.ok = True
        if d.cdc is not None and d.cdc.enabled:
            cdc = engine.cdc
            self.log_rt = engine._log_rt(rt)  # raises like apply_mutations
            assert cdc is not None
            self.plan = cdc.plan(d)
            self.ok = self.plan.fast and cdc.fast_path
            self.cdc = cdc
            self.log_store = self.log_rt.store
            self.log_parts = self.log_store.partitions
            self._builders: dict[tuple[Any, ...], Any] = {}  # (names, len(ck)) -> all-live builder
            # one clock for stream routing and expiries (the engine's): read it once per change
            gens_clock = getattr(cdc.generations, "_now_ms", None)
            self.one_clock = cdc.now_us == engine.now_us and gens_clock == engine.now_ms

    def upsert(  # noqa: PLR0917
        self,
        pk: tuple[Any, ...],
        pkb: bytes,
        token: int,
        ck: tuple[Any, ...],
        marker: AtomicCell | None,
        cells: dict[str, AtomicCell],
        names: tuple[str, ...] | None,
        has_dead: bool,
        ts: int,
    ) -> bool:
        """Insert (``marker`` set) or update of regular atomic ``cells`` (``names``: theirs in
        ``row_entries`` order, for CDC); False: not a direct case, nothing done. Inlines
        ``storage.partition_of``/``new_row``/``merge_atomic_row`` (the hot path of benchmarks)."""
        plan = self.plan
        log = None
        ttl = self.ttl
        now: int | None = None
        if plan is not None:
            assert names is not None
            # one timestamp, one TTL: a null (dead cell, no TTL) next to a TTL splits the change
            if (marker is None and not names) or (ttl and has_dead):
                return False
            now = self.engine.now_us() if self.one_clock else None
            if has_dead:
                live = tuple([cells[n].live for n in names])
                build = plan.builder(row_shape(ck, cells, names, live, ttl or 0))
            else:
                live = None
                key = (names, len(ck))
                build = self._builders.get(key)
                if build is None:
                    build = self._builders[key] = plan.builder(row_shape(ck, cells, names, None, ttl or 0))
            log = log_row(self.cdc, self.cdc.router_for(plan.base), plan, token, pk, ck, cells, 1 if marker is None else 2,
                          ttl or 0, ts, now, names, live, build)  # fmt: skip
        if ttl and now is None:
            now = self.engine.now_us()
        p = self.store.partitions.get(pkb)
        if p is None:
            p = self.store.get_or_create(pk, token, pkb)
        ck_key = self.ck_key
        k = ck if ck_key is tuple else ck_key(ck)
        rows = p.rows
        row = rows.get(k)
        if row is not None:
            merge_atomic_row(row, marker, cells, now or 0)
        else:
            row = Row(ck)
            rows[k] = row
            keys = p.keys
            if not keys or keys[-1] < k:
                keys.append(k)
                p.rowlist.append(row)
            else:
                i = bisect_left(keys, k)
                keys.insert(i, k)
                p.rowlist.insert(i, row)
            if ttl:
                assert now is not None
                exp = now + ttl * 1_000_000
                if marker is not None:
                    marker.expiry = exp
                for c in cells.values():
                    if c.live:
                        c.expiry = exp
            row.marker = marker
            row.cells = cells  # type: ignore[assignment]
        if log is not None:
            self._log(*log)
        return True

    def delete(
        self, pk: tuple[Any, ...], pkb: bytes, token: int, ck: tuple[Any, ...] | None, ts: int
    ) -> None:
        """Row delete (``ck`` set) or partition delete."""
        log = None
        if self.plan is not None:
            op = Op.PARTITION_DELETE if ck is None else Op.ROW_DELETE
            now = self.engine.now_us() if self.one_clock else None
            log = log_row(
                self.cdc, self.cdc.router_for(self.plan.base), self.plan, token, pk, ck, None, op, 0, ts, now
            )
        p = partition_of(self.store, pk, pkb, self.rt.token_of)
        if ck is None:
            p.tomb = max(p.tomb, ts)
        else:
            row = new_row(p, self.ck_key(ck), ck)
            if row is None:
                row = p.rows[self.ck_key(ck)]
            row.tomb = max(row.tomb, ts)
        if log is not None:
            self._log(*log)

    def _log(self, stream: bytes, value: int, cells: dict[str, Any]) -> None:
        """Store one log row (``storage.partition_of``/``new_row`` inlined)."""
        lp = self.log_parts.get(stream)
        if lp is None:
            lp = partition_of(self.log_store, (stream,), stream, self.log_rt.token_of)
        u = _new_uuid(_UUID)  # cdc_fast.make_timeuuid, inlined
        _setattr(u, "int", value)
        _setattr(u, "is_safe", _SAFE_UNKNOWN)
        ck = (u, 0)
        # cdc_fast.log_key, inlined
        k = (((((value >> 64) & 0x0FFF) << 48) | (((value >> 80) & 0xFFFF) << 32) | (value >> 96),
              (value & _M64) ^ _X80), 0)  # fmt: skip
        rows = lp.rows
        if k in rows:  # the same random cdc$time twice: merge as storage would
            apply_row(rows[k], RowMutation(ck, cells=cells), self.engine.now_us())
            return
        row = Row(ck)
        row.cells = cells
        rows[k] = row
        keys = lp.keys
        if not keys or keys[-1] < k:
            keys.append(k)
            lp.rowlist.append(row)
        else:
            i = bisect_left(keys, k)
            keys.insert(i, k)
            lp.rowlist.insert(i, row)


class _Shape:
    """What rows with one sequence of column names need (cached per name tuple within a call)."""

    __slots__ = ("has_ck", "perm", "plain", "simple", "values")

    def __init__(self) -> None:
        self.has_ck = True
        self.plain: list[str] = []  # regular atomic columns needing no normalize(), in row order
        self.values: list[tuple[str, Any, bool, bool, bool]] = []  # name, type, normalize, multi, static
        # (one of ``plain``/``values`` is empty, so cells keep the row's column order)
        self.simple = True  # no static or multi-cell column
        self.perm: tuple[str, ...] | None = None  # regular cells in row_entries order (CDC direct path)


def _shape(  # noqa: PLR0917
    rt: TableRt,
    names: tuple[str, ...],
    row: Mapping[str, Any],
    n: int,
    table: str,
    op: str,
    fast: _Direct | None,
) -> _Shape:
    """Validates a row the way the per-row code always did (same errors in the same order: partition
    key, clustering key, then each column in row order) and describes rows with these ``names``."""
    try:
        _key_getter(rt.pk_names, rt.types)(row)
    except KeyError as e:
        raise CqlError(
            ErrorCode.INVALID, f"bulk_load: row {n} misses partition key column {e.args[0]}"
        ) from e
    sh = _Shape()
    ck_names = rt.ck_names
    sh.has_ck = all(c in row for c in ck_names)
    if not sh.has_ck and (op != "delete" or any(c in row for c in ck_names)):
        missing = [c for c in ck_names if c not in row]
        raise CqlError(ErrorCode.INVALID, f"bulk_load: row {n} misses clustering key column(s) {missing}")
    if op == "delete" and not (ck_names and sh.has_ck):
        return sh
    _key_getter(ck_names, rt.types)(row)
    if op == "delete":
        return sh
    for c in names:
        col = rt.cols.get(c)
        if col is None:
            raise CqlError(ErrorCode.INVALID, f"bulk_load: unknown column {c} in {table}")
        if col.kind in ("partition_key", "clustering"):
            continue
        t = rt.types[c]
        norm = t.name not in _IDENTITY
        if norm:
            normalize(row[c], t)  # its errors come before those of later columns
        static = col.kind == "static"
        multi = bool(t.multicell)
        sh.values.append((c, t, norm, multi, static))
        if static or multi:
            sh.simple = False
    if sh.simple and fast is not None and fast.plan is not None:
        rank = fast.plan.rank
        regular = [v[0] for v in sh.values]
        if all(c in rank for c in regular):
            sh.perm = tuple(sorted(regular, key=rank.__getitem__))
        else:
            sh.simple = False
    if sh.simple and not any(v[2] for v in sh.values):  # regular, atomic, no normalize(): all plain
        sh.plain, sh.values = [v[0] for v in sh.values], []
    return sh


def _key_getter(names: list[str], types: dict[str, Any]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda _row: ()
    if all(types[c].name in _IDENTITY for c in names):
        if len(names) == 1:
            (only,) = names
            return lambda row: (row[only],)
        get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = itemgetter(*names)
        return get
    spec = [(c, types[c]) for c in names]
    return lambda row: tuple(normalize(row[c], t) for c, t in spec)


def _load(  # noqa: PLR0917
    engine: EmulatorEngine,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    op: str,
    start_ts_us: int | None,
    step_us: int,
    ttl: int | None,
    chunk: int,
    direct: bool,
) -> int:
    ks, _, name = table.partition(".")
    rt = engine.catalog.table(ks, name)
    ts = engine.now_us() if start_ts_us is None else start_ts_us
    has_cks = bool(rt.ck_names)
    pk_of = _key_getter(rt.pk_names, rt.types)
    ck_of = _key_getter(rt.ck_names, rt.types)
    value_cells = engine.writer.value_cells
    token_of, pk_bytes = rt.token_of, rt.pk_bytes
    apply_mutations = engine.apply_mutations
    is_delete, is_insert = op == "delete", op == "insert"
    fast = _Direct(engine, rt, ttl) if direct and chunk == 1 else None
    if fast is not None and not fast.ok:
        fast = None
    shapes: dict[tuple[str, ...], _Shape] = {}
    keys: dict[tuple[Any, ...], tuple[bytes, int]] = {}  # partition key -> (serialized, token)
    key_type = _CACHEABLE.get(rt.types[rt.pk_names[0]].name) if len(rt.pk_names) == 1 else None
    pending: list[PartitionMutation] = []
    pkbs: list[bytes] = []
    n = 0
    for row in rows:
        names = tuple(row)
        sh = shapes.get(names)
        if sh is None:
            sh = _shape(rt, names, row, n, table, op, fast)
            if len(shapes) < 64:
                shapes[names] = sh
        pk = pk_of(row)
        # equal keys of the column's own Python type serialize the same: cache (bytes, token)
        known = keys.get(pk) if key_type is not None and type(pk[0]) is key_type else None
        if known is None:
            pkb = pk_bytes(pk)
            token = token_of(pk, pkb)
            if key_type is not None and type(pk[0]) is key_type and len(keys) < 65536:
                keys[pk] = (pkb, token)
        else:
            pkb, token = known
        pm: PartitionMutation | None = None
        if is_delete:
            if not (has_cks and sh.has_ck):
                if fast is not None:
                    fast.delete(pk, pkb, token, None, ts)
                else:
                    pm = PartitionMutation(ks, name, pk, token, partition_tombstone_ts=ts)
            else:
                ck = ck_of(row)
                if fast is not None:
                    fast.delete(pk, pkb, token, ck, ts)
                else:
                    pm = PartitionMutation(ks, name, pk, token, rows=[RowMutation(ck, row_tombstone_ts=ts)])
        else:
            ck = ck_of(row)
            marker = AtomicCell(ts, None, True, ttl) if is_insert else None
            cells: dict[str, Any] = {}
            static: dict[str, Any] | None = None
            has_dead = False
            for c in sh.plain:  # regular atomic columns whose values need no normalize()
                v = row[c]
                if v is None:
                    cells[c] = AtomicCell(ts, None, False)
                    has_dead = True
                else:
                    cells[c] = AtomicCell(ts, v, True, ttl)
            for c, t, norm, multi, is_static in sh.values:
                v = normalize(row[c], t) if norm else row[c]
                if multi:
                    cell: Any = value_cells(rt, c, t, v, ts, ttl, overwrite=True)
                elif v is None:
                    cell = AtomicCell(ts, None, False)
                    has_dead = True
                else:
                    cell = AtomicCell(ts, v, True, ttl)
                if is_static:
                    if static is None:
                        static = {}
                    static[c] = cell
                else:
                    cells[c] = cell
            if not (
                sh.simple
                and fast is not None
                and fast.upsert(pk, pkb, token, ck, marker, cells, sh.perm, has_dead, ts)
            ):
                pm = PartitionMutation(ks, name, pk, token, rows=[RowMutation(ck, marker, None, cells)])
                if static is not None:
                    pm.static_row = RowMutation(None, cells=static)
        if pm is not None:
            pending.append(pm)
            pkbs.append(pkb)
        n += 1
        ts += step_us
        if len(pending) >= chunk:
            apply_mutations(pending, pk_bytes=pkbs)
            pending = []
            pkbs = []
    if pending:
        apply_mutations(pending, pk_bytes=pkbs)
    return n
