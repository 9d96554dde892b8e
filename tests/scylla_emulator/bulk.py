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
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cqltypes_util import normalize
from tests.scylla_emulator.model import AtomicCell, PartitionMutation, RowMutation

if TYPE_CHECKING:
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
        return _load(engine, table, rows, op, start_ts_us, step_us, ttl, chunk)
    finally:
        gc.freeze()  # the loaded rows live as long as the engine: keep them out of future GC scans
        if was_enabled:
            gc.enable()


def _load(  # noqa: PLR0917
    engine: EmulatorEngine,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    op: str,
    start_ts_us: int | None,
    step_us: int,
    ttl: int | None,
    chunk: int,
) -> int:
    ks, _, name = table.partition(".")
    rt = engine.catalog.table(ks, name)
    ts = engine.now_us() if start_ts_us is None else start_ts_us
    pk_names, ck_names = rt.pk_names, rt.ck_names
    types = rt.types
    cols = rt.cols
    writer = engine.writer
    token_of, pk_bytes = rt.token_of, rt.pk_bytes
    apply_mutations = engine.apply_mutations
    pending: list[PartitionMutation] = []
    n = 0
    for row in rows:
        try:
            pk = tuple(normalize(row[c], types[c]) for c in pk_names)
        except KeyError as e:
            raise CqlError(
                ErrorCode.INVALID, f"bulk_load: row {n} misses partition key column {e.args[0]}"
            ) from e
        pm = PartitionMutation(ks, name, pk, token_of(pk, pk_bytes(pk)))
        has_ck = all(c in row for c in ck_names)
        if not has_ck and (op != "delete" or any(c in row for c in ck_names)):
            missing = [c for c in ck_names if c not in row]
            raise CqlError(ErrorCode.INVALID, f"bulk_load: row {n} misses clustering key column(s) {missing}")
        if op == "delete" and not (ck_names and has_ck):
            pm.partition_tombstone_ts = ts
        else:
            ck = tuple(normalize(row[c], types[c]) for c in ck_names)
            rm = RowMutation(ck)
            if op == "delete":
                rm.row_tombstone_ts = ts
            else:
                if op == "insert":
                    rm.marker = AtomicCell(ts, ttl=ttl)
                for c, v in row.items():
                    col = cols.get(c)
                    if col is None:
                        raise CqlError(ErrorCode.INVALID, f"bulk_load: unknown column {c} in {table}")
                    if col.kind in ("partition_key", "clustering"):
                        continue
                    t = types[c]
                    cell = writer.value_cells(rt, c, t, normalize(v, t), ts, ttl, overwrite=True)
                    if col.kind == "static":
                        if pm.static_row is None:
                            pm.static_row = RowMutation(None)
                        pm.static_row.cells[c] = cell
                    else:
                        rm.cells[c] = cell
            pm.rows.append(rm)
        pending.append(pm)
        n += 1
        ts += step_us
        if len(pending) >= chunk:
            apply_mutations(pending)
            pending = []
    if pending:
        apply_mutations(pending)
    return n
