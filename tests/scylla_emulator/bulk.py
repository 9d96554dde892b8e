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
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cdc_fast import Op, entries_of, log_key, log_row, make_timeuuid
from tests.scylla_emulator.cqltypes_util import normalize
from tests.scylla_emulator.model import AtomicCell, PartitionMutation, RowMutation
from tests.scylla_emulator.storage import apply_row, new_row, partition_of

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
    per-statement timestamps (faster; changes to the same partition within a chunk are merged the
    way Scylla merges a batch). Raises CqlError on bad rows (unknown column, missing key).
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
_KEY, _STATIC, _REGULAR = 0, 1, 2


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

    def upsert(  # noqa: PLR0917
        self,
        pk: tuple[Any, ...],
        pkb: bytes,
        token: int,
        ck: tuple[Any, ...],
        marker: AtomicCell | None,
        cells: dict[str, AtomicCell],
        ts: int,
    ) -> bool:
        """Insert (``marker`` set) or update of regular atomic cells; False: not a direct case."""
        plan = self.plan
        log = None
        if plan is not None:
            entries = entries_of(plan, cells) if cells else []
            if entries is None:
                return False
            ttl = self.ttl or 0
            if marker is None:
                if not entries:
                    return False
                # first cell decides the TTL of the change; all must agree (else CDC splits it)
                if ttl and any(not c.live for c in cells.values()):
                    return False
                op = 1
            else:
                if ttl and any(not c.live for c in cells.values()):
                    return False
                op = 2
            log = log_row(self.cdc, self.cdc.router, plan, token, pk, ck, entries, op, ttl, ts)
        p = partition_of(self.store, pk, pkb, self.rt.token_of)
        row = new_row(p, self.ck_key(ck), ck)
        ttl_set = bool(self.ttl)
        if row is None:
            k = self.ck_key(ck)
            apply_row(p.rows[k], RowMutation(ck, marker, None, cells), self.engine.now_us())
        else:
            if ttl_set:
                now = self.engine.now_us()
                exp = now + self.ttl * 1_000_000  # type: ignore[operator]
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
            log = log_row(self.cdc, self.cdc.router, self.plan, token, pk, ck, None, op, 0, ts)
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
        lp = partition_of(self.log_store, (stream,), stream, self.log_rt.token_of)
        ck = (make_timeuuid(value), 0)
        row = new_row(lp, log_key(value), ck)
        if row is None:  # the same random cdc$time twice: merge as storage would
            apply_row(lp.rows[log_key(value)], RowMutation(ck, cells=cells), self.engine.now_us())
        else:
            row.cells = cells


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
    pk_names, ck_names = rt.pk_names, rt.ck_names
    types = rt.types
    # per column: (kind, type, needs normalize, multi-cell)
    plan: dict[str, tuple[int, Any, bool, bool]] = {}
    for c in rt.d.columns:
        t = types[c.name]
        kind = (
            _KEY if c.kind in ("partition_key", "clustering") else _STATIC if c.kind == "static" else _REGULAR
        )
        plan[c.name] = (kind, t, t.name not in _IDENTITY, bool(t.multicell))
    pk_norm = [(c, types[c]) if plan[c][2] else (c, None) for c in pk_names]
    ck_norm = [(c, types[c]) if plan[c][2] else (c, None) for c in ck_names]
    value_cells = engine.writer.value_cells
    token_of, pk_bytes = rt.token_of, rt.pk_bytes
    apply_mutations = engine.apply_mutations
    is_delete, is_insert = op == "delete", op == "insert"
    fast = _Direct(engine, rt, ttl) if direct and chunk == 1 else None
    if fast is not None and not fast.ok:
        fast = None
    pending: list[PartitionMutation] = []
    pkbs: list[bytes] = []
    n = 0
    for row in rows:
        try:
            pk = tuple(row[c] if t is None else normalize(row[c], t) for c, t in pk_norm)
        except KeyError as e:
            raise CqlError(
                ErrorCode.INVALID, f"bulk_load: row {n} misses partition key column {e.args[0]}"
            ) from e
        pkb = pk_bytes(pk)
        token = token_of(pk, pkb)
        has_ck = True
        for c in ck_names:
            if c not in row:
                has_ck = False
                break
        if not has_ck and (not is_delete or any(c in row for c in ck_names)):
            missing = [c for c in ck_names if c not in row]
            raise CqlError(ErrorCode.INVALID, f"bulk_load: row {n} misses clustering key column(s) {missing}")
        pm: PartitionMutation | None = None
        if is_delete and not (ck_names and has_ck):
            if fast is not None:
                fast.delete(pk, pkb, token, None, ts)
            else:
                pm = PartitionMutation(ks, name, pk, token, partition_tombstone_ts=ts)
        else:
            ck = tuple(row[c] if t is None else normalize(row[c], t) for c, t in ck_norm)
            if is_delete:
                if fast is not None:
                    fast.delete(pk, pkb, token, ck, ts)
                else:
                    pm = PartitionMutation(ks, name, pk, token, rows=[RowMutation(ck, row_tombstone_ts=ts)])
            else:
                marker = AtomicCell(ts, ttl=ttl) if is_insert else None
                cells: dict[str, Any] = {}
                static: dict[str, Any] | None = None
                simple = True
                for c, raw in row.items():
                    info = plan.get(c)
                    if info is None:
                        raise CqlError(ErrorCode.INVALID, f"bulk_load: unknown column {c} in {table}")
                    kind, t, norm, multi = info
                    if kind == _KEY:
                        continue
                    v = normalize(raw, t) if norm else raw
                    if multi:
                        cell: Any = value_cells(rt, c, t, v, ts, ttl, overwrite=True)
                        simple = False
                    elif v is None:
                        cell = AtomicCell(ts, None, live=False)
                    else:
                        cell = AtomicCell(ts, v, ttl=ttl)
                    if kind == _STATIC:
                        if static is None:
                            static = {}
                        static[c] = cell
                        simple = False
                    else:
                        cells[c] = cell
                if not (simple and fast is not None and fast.upsert(pk, pkb, token, ck, marker, cells, ts)):
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
