"""The CDC log of the Scylla emulator: log schema, options and the base -> log transformation.

Follows shared/docs/scylla-cdc.md §1-§3 and, where that is silent or differs, Scylla's own code
(``cdc/log.cc``, ``cdc/split.cc``), which this module ports:

* ``log_table_def`` builds ``<base>_scylla_cdc_log`` (``log.cc::add_columns_to_cdc_log``).
* ``parse_cdc_options`` / ``cdc_extension_blob``: ``WITH cdc = {...}`` (``log.cc::options``).
* ``CdcLog.transform`` turns the base ``PartitionMutation`` list of one write (statement or batch)
  into log mutations. Per base partition the change is either processed as one group
  (``should_split`` false) or split into one group per timestamp, each group listing, in order,
  preimages, static updates, clustered inserts, clustered updates, row deletes, range deletes, the
  partition delete (each type by clustering row, then TTL, "no TTL" first) and postimages
  (``split.cc::process_changes_with_splitting``). Images come from ``read_row`` (the state before
  the write) updated by each delta row, exactly like ``log.cc::transformer``.
"""

from __future__ import annotations

import random
import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

from .api import CqlError, ErrorCode
from .cdc_fast import Op, StreamRouter, TablePlan, fast_transform, make_timeuuid, timeuuid_int
from .cdc_split import Entry, extract, hashable, marker_live, row_entries, should_split
from .cdctypes import (
    cell_key_type,
    clustering_cmp,
    collection_kind,
    deleted_elements_type,
    deleted_set,
    frozen_value,
    log_value_type,
    sort_by_cmp,
    sorted_cells,
    split_type,
)
from .generations import Generations, stream_token
from .model import (
    AtomicCell,
    CdcTableOptions,
    CollectionMutation,
    ColumnDef,
    PartitionMutation,
    RangeTombstone,
    RowMutation,
    TableDef,
)

__all__ = [
    "LOG_SUFFIX",
    "CdcLog",
    "Op",
    "ReadRow",
    "cdc_extension_blob",
    "log_table_def",
    "parse_cdc_options",
    "random_timeuuid",
]

LOG_SUFFIX = "_scylla_cdc_log"
ReadRow = Callable[[TableDef, tuple[Any, ...], tuple[Any, ...] | None], dict[str, Any] | None]


# --------------------------------------------------------------------------------------------- schema


def log_table_def(base: TableDef) -> TableDef:
    """The log table of ``base`` (§1.1-§1.2). Raises CqlError(INVALID) for counters or a log table."""
    if base.is_cdc_log:
        raise CqlError(
            ErrorCode.INVALID,
            f"Cannot create a CDC log for a table {base.keyspace}.{base.name},"
            " because creating nested CDC logs is not allowed",
        )
    if any(split_type(c.type)[0] == "counter" for c in base.columns):
        raise CqlError(
            ErrorCode.INVALID,
            f"Cannot create CDC log for table {base.keyspace}.{base.name}. Counter support not implemented",
        )
    cols = [
        ColumnDef("cdc$stream_id", "blob", "partition_key", 0),
        ColumnDef("cdc$time", "timeuuid", "clustering", 0, "asc"),
        ColumnDef("cdc$batch_seq_no", "int", "clustering", 1, "asc"),
        ColumnDef("cdc$operation", "tinyint", "regular"),
        ColumnDef("cdc$ttl", "bigint", "regular"),
        ColumnDef("cdc$end_of_batch", "boolean", "regular"),
    ]
    for c in base.partition_key + base.clustering_key:
        cols.append(ColumnDef(c.name, c.type, "regular"))
    for c in base.static_columns + base.regular_columns:
        if split_type(c.type)[0] == "empty":  # COMPACT STORAGE's hidden column
            continue
        cols.append(ColumnDef(c.name, log_value_type(c.type), "regular"))
        cols.append(ColumnDef("cdc$deleted_" + c.name, "boolean", "regular"))
        if collection_kind(c.type) is not None:
            cols.append(ColumnDef("cdc$deleted_elements_" + c.name, deleted_elements_type(c.type), "regular"))
    ttl = base.cdc.ttl if base.cdc is not None else 86400
    options: dict[str, Any] = {
        "comment": f"CDC log for {base.keyspace}.{base.name}",
        "caching": {"enabled": "false", "keys": "NONE", "rows_per_partition": "NONE"},
        "compaction": {"class": "TimeWindowCompactionStrategy"},
        "default_time_to_live": 0,
        "tombstone_gc": {"mode": "timeout", "propagation_delay_in_seconds": "3600"},
    }
    if ttl > 0:
        window_s = -(-ttl // 24)
        options["gc_grace_seconds"] = 0
        options["compaction"] = {
            "class": "TimeWindowCompactionStrategy",
            "compaction_window_size": str(-(-window_s // 60)),
            "compaction_window_unit": "MINUTES",
            "expired_sstable_check_frequency_seconds": str(max(1, window_s // 2)),
        }
    return TableDef(
        keyspace=base.keyspace,
        name=base.name + LOG_SUFFIX,
        columns=cols,
        options=options,
        cdc=None,
        is_cdc_log=True,
        default_ttl=0,
    )


_STOI = re.compile(r"\s*([+-]?\d+)")


def parse_cdc_options(m: dict[str, str]) -> CdcTableOptions:
    """``WITH cdc = {...}`` -> options (cdc/log.cc::options::options). Keys and values are
    case-insensitive; errors are Scylla's ``configuration_exception`` texts (code CONFIG_ERROR)."""

    def bad(msg: str) -> CqlError:
        return CqlError(ErrorCode.CONFIG_ERROR, msg)

    enabled, preimage, postimage, delta, ttl = False, "false", False, "full", 86400
    for raw_key, raw_val in m.items():
        key, val = str(raw_key).lower(), str(raw_val).lower()
        is_true, is_false = val in ("true", "1"), val in ("false", "0")
        if key in ("enabled", "postimage", "enable_requested", "tablet_merge_blocked"):
            if not (is_true or is_false):
                raise bad(f'Invalid value for CDC option "{key}": {raw_val}')
            if key == "enabled":
                enabled = is_true
            elif key == "postimage":
                postimage = is_true
        elif key == "preimage":
            if is_true:
                preimage = "true"
            elif val == "full":
                preimage = "full"
            elif is_false:
                preimage = "false"
            else:
                raise bad(f'Invalid value for CDC option "preimage": {raw_val}')
        elif key == "delta":
            if val == "keys":
                delta = "keys"
            elif val != "full":
                raise bad(f'Invalid value for CDC option "delta": {raw_val}')
        elif key == "ttl":
            match = _STOI.match(str(raw_val))  # std::stoi: leading digits, trailing text ignored
            if match is None:
                raise bad(f'Invalid value for CDC option "ttl": {raw_val}')
            ttl = int(match.group(1))
            if not -(2**31) <= ttl < 2**31:
                raise bad("Invalid CDC option: ttl too large")
            if ttl < 0:
                raise bad("Invalid CDC option: ttl must be >= 0")
        else:
            raise bad(f"Invalid CDC option: {raw_key}")
    return CdcTableOptions(enabled=enabled, preimage=preimage, postimage=postimage, delta=delta, ttl=ttl)


def cdc_extension_blob(opts: CdcTableOptions) -> bytes:
    """``system_schema.tables.extensions['cdc']``: Scylla IDL ``map<string,string>`` (§3.1) of
    ``options::to_map`` in std::map (sorted key) order."""
    items = sorted(
        {
            "enabled": "true" if opts.enabled else "false",
            "preimage": opts.preimage,
            "postimage": "true" if opts.postimage else "false",
            "delta": opts.delta,
            "ttl": str(opts.ttl),
        }.items()
    )
    out = bytearray(struct.pack("<I", len(items)))
    for k, v in items:
        for s in (k.encode(), v.encode()):
            out += struct.pack("<I", len(s)) + s
    return bytes(out)


def random_timeuuid(ts_us: int, rng: random.Random | None = None) -> uuid.UUID:
    """UUID_gen::get_random_time_UUID_from_micros: v1 timestamp ``ts_us``, random lsb, IETF variant."""
    return make_timeuuid(timeuuid_int(ts_us, (rng or random).getrandbits(64)))


# ------------------------------------------------------------------------------------- transform

_ALL = None  # "all columns" in an image column set


class CdcLog:
    """Builds log mutations for writes to CDC-enabled tables (see the module docstring)."""

    def __init__(
        self, generations: Generations, now_us: Callable[[], int], *, rng: random.Random | None = None
    ):
        self.generations = generations
        self.now_us = now_us
        self.rng = rng or random.Random()
        self.router = StreamRouter(generations)
        self.tablets: Any = None  # tablets.Tablets of the engine: per-table stream sets
        self._plans: dict[int, TablePlan] = {}
        self.fast_path = True  # False: always the general path (equivalence tests)

    def router_for(self, base: TableDef) -> Any:
        """The stream router of ``base``: its own stream sets in a tablet keyspace
        (``tablets.TabletRouter``), else the node's vnode generations."""
        if self.tablets is not None:
            r = self.tablets.router(base.keyspace, base.name)
            if r is not None:
                return r
        return self.router

    def plan(self, base: TableDef) -> TablePlan:
        """The fast-path plan of a CDC-enabled ``base`` (cached while its definition is unchanged)."""
        plan = self._plans.get(id(base))
        if plan is None or not plan.current(base):
            if len(self._plans) > 256:
                self._plans.clear()
            plan = self._plans[id(base)] = TablePlan(base)
        return plan

    def transform(
        self, base: TableDef, log: TableDef, mutations: list[PartitionMutation], read_row: ReadRow
    ) -> list[PartitionMutation]:
        """Log mutations for ``mutations`` (all of table ``base``), called before they are applied.

        Several mutations of one partition are merged first (as Scylla's batch statement does).
        Raises CqlError(INVALID) for a write timestamp "from the future"/"from the past"."""
        if base.cdc is None or not base.cdc.enabled:
            return []
        if len(mutations) == 1 and self.fast_path:
            pm = mutations[0]
            if pm.table == base.name and pm.keyspace == base.keyspace:
                plan = self.plan(base)
                if plan.fast:
                    fast = fast_transform(self, self.router_for(base), plan, log, pm)
                    if fast is not None:
                        return fast
        for pm in mutations:
            if (pm.keyspace, pm.table) != (base.keyspace, base.name):
                raise ValueError(f"mutation of {pm.keyspace}.{pm.table} passed to the CDC log of {base.name}")
        out: list[PartitionMutation] = []
        for pm in _merge_partitions(mutations):
            t = _Transformer(self, base, log, pm, read_row)
            try:
                out.extend(t.run())
            finally:
                t.builders.clear()  # break the transformer <-> builder cycles (bulk loads run without GC)
                t.b = None
        return out


def _reconcile(a: AtomicCell, b: AtomicCell) -> AtomicCell:
    """The winning cell (higher timestamp; on a tie a tombstone, then the larger value)."""
    if a.ts != b.ts:
        return a if a.ts > b.ts else b
    if a.live != b.live:
        return b if a.live else a
    try:
        return b if b.value > a.value else a
    except TypeError:
        return b


def _merge_cells(into: dict[str, AtomicCell | CollectionMutation], cells: dict[str, Any]) -> None:
    for name, c in cells.items():
        old = into.get(name)
        if old is None:
            into[name] = c
        elif isinstance(old, AtomicCell) and isinstance(c, AtomicCell):
            into[name] = _reconcile(old, c)
        elif isinstance(old, CollectionMutation) and isinstance(c, CollectionMutation):
            tomb = max((t for t in (old.tombstone_ts, c.tombstone_ts) if t is not None), default=None)
            merged: dict[Any, tuple[Any, AtomicCell]] = {hashable(k): (k, v) for k, v in old.cells}
            for k, v in c.cells:
                prev = merged.get(hashable(k))
                merged[hashable(k)] = (k, v if prev is None else _reconcile(prev[1], v))
            into[name] = CollectionMutation(tomb, list(merged.values()))
        else:
            raise ValueError(f"column {name} written both as atomic and as collection")


def _merge_row(a: RowMutation, b: RowMutation) -> None:
    if b.marker is not None:
        a.marker = b.marker if a.marker is None else _reconcile(a.marker, b.marker)
    if b.row_tombstone_ts is not None:
        a.row_tombstone_ts = max(a.row_tombstone_ts or b.row_tombstone_ts, b.row_tombstone_ts)
    _merge_cells(a.cells, b.cells)


def _merge_partitions(mutations: list[PartitionMutation]) -> list[PartitionMutation]:
    by_key: dict[Any, PartitionMutation] = {}
    for pm in mutations:
        key = hashable(pm.partition_key)
        if key not in by_key:
            by_key[key] = PartitionMutation(
                pm.keyspace, pm.table, pm.partition_key, pm.token, system_originated=pm.system_originated
            )
        acc = by_key[key]
        acc.system_originated = acc.system_originated or pm.system_originated
        if pm.partition_tombstone_ts is not None:
            acc.partition_tombstone_ts = max(acc.partition_tombstone_ts or pm.partition_tombstone_ts,
                                             pm.partition_tombstone_ts)  # fmt: skip
        for row in ([pm.static_row] if pm.static_row is not None else []) + pm.rows:
            if row.clustering is None:
                if acc.static_row is None:
                    acc.static_row = RowMutation(None)
                _merge_row(acc.static_row, row)
                continue
            for existing in acc.rows:
                if hashable(existing.clustering) == hashable(row.clustering):
                    _merge_row(existing, row)
                    break
            else:
                fresh = RowMutation(row.clustering)
                _merge_row(fresh, row)
                acc.rows.append(fresh)
        acc.range_tombstones.extend(pm.range_tombstones)
    return list(by_key.values())


class _Builder:
    """One log group: one (stream, cdc$time) with batch_seq_no 0, 1, ... (log.cc::log_mutation_builder)."""

    def __init__(self, t: _Transformer, ts: int, stream: bytes) -> None:
        self.t = t
        self.ts = ts
        self.stream = stream
        self.time = random_timeuuid(ts, t.cdc.rng)
        ttl = t.opts.ttl
        self.ttl = ttl or None
        self.expiry = t.cdc.now_us() + ttl * 1_000_000 if ttl else None
        self.rows: list[RowMutation] = []

    def set(self, row: RowMutation, column: str, value: Any) -> None:
        row.cells[column] = AtomicCell(ts=self.ts, value=value, ttl=self.ttl, expiry=self.expiry)

    def new_row(self, op: int | None) -> RowMutation:
        row = RowMutation(clustering=(self.time, len(self.rows)))
        self.rows.append(row)
        for col, v in zip(self.t.base.partition_key, self.t.pm.partition_key, strict=True):
            self.set(row, col.name, v)
        if op is not None:
            self.set(row, "cdc$operation", op)
        return row

    def set_clustering(self, row: RowMutation, prefix: tuple[Any, ...]) -> None:
        for col, v in zip(self.t.base.clustering_key, prefix, strict=False):
            self.set(row, col.name, v)

    def mutation(self) -> PartitionMutation | None:
        if not self.rows:
            return None
        self.set(self.rows[-1], "cdc$end_of_batch", True)
        log = self.t.log
        return PartitionMutation(
            log.keyspace, log.name, (self.stream,), stream_token(self.stream), rows=self.rows
        )


class _Transformer:
    """log.cc::transformer for one base partition mutation."""

    def __init__(self, cdc: CdcLog, base: TableDef, log: TableDef, pm: PartitionMutation, read_row: ReadRow):
        assert base.cdc is not None
        self.cdc, self.base, self.log, self.pm, self.read_row = cdc, base, log, pm, read_row
        self.opts: CdcTableOptions = base.cdc
        ck = base.clustering_key
        self.cmp = clustering_cmp([c.type for c in ck], [c.clustering_order for c in ck])
        live = [r for r in pm.rows if marker_live(r) or r.cells or r.row_tombstone_ts is not None]
        self.rows: list[RowMutation] = sort_by_cmp(live, self.cmp, lambda r: r.clustering)
        self.range_tombstones = sort_by_cmp(list(pm.range_tombstones), self._bound_cmp, lambda rt: rt)
        self.static_state: dict[str, Any] = {}
        self.row_states: dict[Any, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.touched_static = False
        self.update_state = False
        self.delta_values = self.opts.delta == "full"
        self.row_delete_op = Op.SERVICE_ROW_DELETE if pm.system_originated else Op.ROW_DELETE
        self.partition_delete_op = (
            Op.SERVICE_PARTITION_DELETE if pm.system_originated else Op.PARTITION_DELETE
        )
        self.builders: list[_Builder] = []
        self.b: _Builder | None = None

    # ------------------------------------------------------------------ driver
    @property
    def preimage(self) -> bool:
        return self.opts.preimage != "false"

    def run(self) -> list[PartitionMutation]:
        if self.preimage or self.opts.postimage:
            self._load_preimage()
        if should_split(self.pm, self.rows):
            self._with_splitting()
        else:
            self._without_splitting()
        return [m for m in (b.mutation() for b in self.builders) if m is not None]

    def _begin(self, ts: int, is_last: bool) -> _Builder:
        stream = self.cdc.router_for(self.base).stream_for(self.pm.token, ts)
        self.b = _Builder(self, ts, stream)
        self.builders.append(self.b)
        self.update_state = self.opts.postimage or (not is_last and self.preimage)
        return self.b

    def _with_splitting(self) -> None:
        changes = extract(self.rows, self.pm)
        if not changes:
            return
        last = max(changes)
        no_ck = not self.base.clustering_key
        for ts in sorted(changes):
            btch = changes[ts]
            static_cols: set[str] = set()
            affected: dict[Any, tuple[tuple[Any, ...], set[str] | None]] = {}
            if self.preimage or self.opts.postimage:
                for _ttl, entries in btch.static_updates:
                    static_cols.update(n for n, _e in entries)
                for ck in btch.row_deletes:
                    affected[hashable(ck)] = (ck, _ALL)
                if btch.partition_delete and no_ck:
                    affected.setdefault((), ((), _ALL))
                for change in [(c[1], c[3]) for c in btch.inserts] + [(c[1], c[2]) for c in btch.updates]:
                    ck, entries = change
                    cols = affected.setdefault(hashable(ck), (ck, set()))[1]
                    if cols is not _ALL:
                        cols.update(n for n, _e in entries)
            b = self._begin(ts, ts == last)
            ordered = sort_by_cmp(list(affected.values()), self.cmp, lambda a: a[0])
            if self.preimage:
                if static_cols:
                    self._image(Op.PRE_IMAGE, None, static_cols)
                for ck, cols in ordered:
                    self._image(Op.PRE_IMAGE, ck, cols)
            for _ttl, entries in btch.static_updates:
                self._static_row(entries)
            for _ttl, ck, marker, entries in btch.inserts:
                self._clustered_row(ck, marker, entries)
            for _ttl, ck, entries in btch.updates:
                self._clustered_row(ck, None, entries)
            for ck in btch.row_deletes:
                self._row_delete(ck)
            for rt in btch.range_deletes:
                self._range_delete(rt)
            if btch.partition_delete:
                self._partition_delete()
            if self.opts.postimage:
                if static_cols:
                    self._image(Op.POST_IMAGE, None, _ALL)
                for ck, _cols in ordered:
                    self._image(Op.POST_IMAGE, ck, _ALL)
            assert b is self.b

    def _find_timestamp(self) -> int:
        """split.cc::find_timestamp: the first timestamp met while visiting the mutation."""
        pm = self.pm
        if pm.static_row is not None and pm.static_row.cells:
            ts = _first_cell_ts(pm.static_row.cells)
            if ts is not None:
                return ts
        for row in self.rows:
            if marker_live(row) and row.marker is not None:
                return row.marker.ts
            ts = _first_cell_ts(row.cells)
            if ts is not None:
                return ts
            if row.row_tombstone_ts is not None:
                return row.row_tombstone_ts
        if self.range_tombstones:
            return int(self.range_tombstones[0].ts)
        if pm.partition_tombstone_ts is not None:
            return pm.partition_tombstone_ts
        raise ValueError("cdc: could not find timestamp of mutation")

    def _without_splitting(self) -> None:
        self._begin(self._find_timestamp(), True)
        sr = self.pm.static_row
        has_static = sr is not None and bool(sr.cells)
        if self.preimage:
            if has_static and sr is not None:
                self._image(Op.PRE_IMAGE, None, set(sr.cells))
            for row in self.rows:
                assert row.clustering is not None
                cols = _ALL if row.row_tombstone_ts is not None else set(row.cells)
                self._image(Op.PRE_IMAGE, row.clustering, cols)
        if has_static and sr is not None:
            self._static_row(row_entries(sr.cells))
        for row in self.rows:
            assert row.clustering is not None
            if marker_live(row) or row.cells:
                self._clustered_row(
                    row.clustering, row.marker if marker_live(row) else None, row_entries(row.cells)
                )
            if row.row_tombstone_ts is not None:
                self._row_delete(row.clustering)
        for rt in self.range_tombstones:
            self._range_delete(rt)
        if self.pm.partition_tombstone_ts is not None:
            self._partition_delete()
        if self.opts.postimage:
            if has_static:
                self._image(Op.POST_IMAGE, None, _ALL)
            for row in self.rows:
                assert row.clustering is not None
                self._image(Op.POST_IMAGE, row.clustering, _ALL)

    # ------------------------------------------------------------------ preimage read
    def _load_preimage(self) -> None:
        """log.cc::pre_image_select + load_preimage_results_into_state, including which columns
        that query selects (for ``preimage: true`` without postimage: the static cells written and
        the cells of the first written clustered row)."""
        pm, opts, base = self.pm, self.opts, self.base
        sr = pm.static_row
        has_static = sr is not None and bool(sr.cells)
        no_ck_pdel = not base.clustering_key and pm.partition_tombstone_ts is not None
        if not self.rows and not has_static and not no_ck_pdel:
            return
        everything = opts.postimage or opts.preimage == "full"
        if has_static and sr is not None:
            static_cols = [c.name for c in base.static_columns] if everything else list(sr.cells)
            current = self.read_row(base, pm.partition_key, None)
            if current is not None:
                for name in static_cols:
                    v = current.get(name)
                    if v is not None and v != []:
                        self.static_state[name] = v
            if not self.rows:
                return
        if self.rows or no_ck_pdel:
            has_row_delete = any(r.row_tombstone_ts is not None for r in self.rows)
            if has_row_delete or everything or no_ck_pdel:
                cols = [c.name for c in base.regular_columns]
            else:
                cols = list(self.rows[0].cells)
            cks = [r.clustering for r in self.rows] if base.clustering_key else [()]
            for ck in cks:
                assert ck is not None
                current = self.read_row(base, pm.partition_key, ck)
                if current is None:
                    continue
                state = {n: current[n] for n in cols if current.get(n) is not None and current.get(n) != []}
                self.row_states[hashable(ck)] = (ck, state)

    # ------------------------------------------------------------------ row processing
    def _state_get(self, ck: tuple[Any, ...] | None, name: str) -> Any:
        if ck is None:
            return self.static_state.get(name)
        st = self.row_states.get(hashable(ck))
        return None if st is None else st[1].get(name)

    def _state_set(self, ck: tuple[Any, ...] | None, name: str, value: Any) -> None:
        if ck is None:
            self.static_state[name] = value
        else:
            self.row_states.setdefault(hashable(ck), (ck, {}))[1][name] = value

    def _visit_cells(
        self, row: RowMutation, ck: tuple[Any, ...] | None, entries: list[Entry], ttl: int | None
    ) -> int | None:
        assert self.b is not None
        b = self.b
        for name, e in entries:
            cdef = self.base.column(name)
            if cdef is None:
                raise ValueError(f"unknown column {name} in a mutation of {self.base.name}")
            if isinstance(e, AtomicCell):
                if split_type(cdef.type)[0] == "empty":
                    continue
                if e.live:
                    ttl = e.ttl or None
                    if self.delta_values:
                        b.set(row, name, e.value)
                    if self.update_state:
                        self._state_set(ck, name, e.value)
                else:
                    if self.delta_values:
                        b.set(row, "cdc$deleted_" + name, True)
                    if self.update_state:
                        self._state_set(ck, name, None)
                continue
            kind = collection_kind(cdef.type)
            added: list[tuple[Any, Any]] = []
            deleted: list[Any] = []
            for key, cell in e.cells:
                if cell.live:
                    ttl = cell.ttl or None
                    added.append((key, cell.value))
                else:
                    deleted.append(key)
            added_present = bool(added) or kind == "udt"  # a UDT delta always carries a value
            if self.delta_values:
                if e.tombstone:
                    b.set(row, "cdc$deleted_" + name, True)
                if deleted:
                    b.set(row, "cdc$deleted_elements_" + name, deleted_set(deleted))
                if added_present:
                    b.set(row, name, frozen_value(cdef.type, added))
            if self.update_state:
                prev = None if e.tombstone else self._state_get(ck, name)
                nxt = None
                if added_present or (deleted and prev is not None):
                    nxt = _merge_collection(cdef.type, prev, added, deleted)
                self._state_set(ck, name, nxt)
        return ttl

    def _static_row(self, entries: list[Entry]) -> None:
        assert self.b is not None
        self.touched_static = True
        row = self.b.new_row(Op.UPDATE)
        ttl = self._visit_cells(row, None, entries, None)
        if ttl:
            self.b.set(row, "cdc$ttl", ttl)

    def _clustered_row(self, ck: tuple[Any, ...], marker: AtomicCell | None, entries: list[Entry]) -> None:
        assert self.b is not None
        row = self.b.new_row(None)
        self.b.set_clustering(row, ck)
        op, ttl = Op.UPDATE, None
        if marker is not None:
            op, ttl = Op.INSERT, marker.ttl or None
        ttl = self._visit_cells(row, ck, entries, ttl)
        if self.update_state:
            self.row_states.setdefault(hashable(ck), (ck, {}))  # #7716: a postimage even without cells
        self.b.set(row, "cdc$operation", int(op))
        if ttl:
            self.b.set(row, "cdc$ttl", ttl)

    def _row_delete(self, ck: tuple[Any, ...]) -> None:
        assert self.b is not None
        row = self.b.new_row(self.row_delete_op)
        self.b.set_clustering(row, ck)
        if self.update_state:
            self.row_states.pop(hashable(ck), None)

    def _range_delete(self, rt: RangeTombstone) -> None:
        assert self.b is not None
        start_incl = rt.start_inclusive or not rt.start
        end_incl = rt.end_inclusive or not rt.end
        row = self.b.new_row(
            Op.RANGE_DELETE_START_INCLUSIVE if start_incl else Op.RANGE_DELETE_START_EXCLUSIVE
        )
        self.b.set_clustering(row, rt.start)
        row = self.b.new_row(Op.RANGE_DELETE_END_INCLUSIVE if end_incl else Op.RANGE_DELETE_END_EXCLUSIVE)
        self.b.set_clustering(row, rt.end)
        if self.update_state:  # #6900: rows inside the range have no postimage
            for key, (ck, _st) in list(self.row_states.items()):
                if self._in_range(ck, rt):
                    del self.row_states[key]

    def _partition_delete(self) -> None:
        assert self.b is not None
        self.b.new_row(self.partition_delete_op)
        if self.update_state:
            self.row_states.clear()

    def _image(self, op: Op, ck: tuple[Any, ...] | None, cols: set[str] | None) -> None:
        """log.cc::transformer::generate_image."""
        assert self.b is not None
        if ck is not None:
            st = self.row_states.get(hashable(ck))
            if st is None:
                return
            state = st[1]
            kind_cols = self.base.regular_columns
        else:
            state = self.static_state
            if not state and not self.touched_static:
                return
            kind_cols = self.base.static_columns
        row = self.b.new_row(op)
        if ck is not None:
            self.b.set_clustering(row, ck)
        if op == Op.PRE_IMAGE and self.opts.preimage != "full" and cols is not _ALL:
            names = [c for c in kind_cols if c.name in cols]
        else:
            names = list(kind_cols)
        for cdef in names:
            if split_type(cdef.type)[0] == "empty":
                continue
            v = state.get(cdef.name)
            if v is not None:
                self.b.set(row, cdef.name, frozen_value(cdef.type, v) if collection_kind(cdef.type) else v)
            elif op == Op.PRE_IMAGE:
                self.b.set(row, "cdc$deleted_" + cdef.name, True)

    # ------------------------------------------------------------------ clustering bounds
    def _bound_cmp(self, a: RangeTombstone, b: RangeTombstone) -> int:
        """Order range tombstones by their start bound."""
        return _bound_pos_cmp(self.cmp, a.start, -1 if a.start_inclusive or not a.start else 1,
                              b.start, -1 if b.start_inclusive or not b.start else 1)  # fmt: skip

    def _in_range(self, ck: tuple[Any, ...], rt: RangeTombstone) -> bool:
        if rt.start:
            c = self.cmp(ck[: len(rt.start)], rt.start)
            if c < 0 or (c == 0 and not rt.start_inclusive):
                return False
        if rt.end:
            c = self.cmp(ck[: len(rt.end)], rt.end)
            if c > 0 or (c == 0 and not rt.end_inclusive):
                return False
        return True


def _bound_pos_cmp(
    cmp: Callable[[Any, Any], int], a: tuple[Any, ...], wa: int, b: tuple[Any, ...], wb: int
) -> int:
    n = min(len(a), len(b))
    c = cmp(a[:n], b[:n])
    if c:
        return c
    if len(a) == len(b):
        return (wa > wb) - (wa < wb)
    return wa if len(a) < len(b) else -wb


def _first_cell_ts(cells: dict[str, AtomicCell | CollectionMutation]) -> int | None:
    for name in sorted(cells, key=lambda n: n.encode()):
        c = cells[name]
        if isinstance(c, AtomicCell):
            return c.ts
        if c.tombstone_ts is not None:
            return c.tombstone_ts + 1
        if c.cells:
            return c.cells[0][1].ts
    return None


def _merge_collection(type_text: str, prev: Any, added: list[tuple[Any, Any]], deleted: list[Any]) -> Any:
    """log.cc::merge: the new state of a multi-cell column (``list[(key, value)]``)."""
    gone = {hashable(k) for k in deleted}
    if collection_kind(type_text) == "udt":
        fields = {int(k): v for k, v in (prev or []) if v is not None}
        fields.update({int(k): v for k, v in added if v is not None})
        for k in gone:
            fields.pop(int(k), None)
        return sorted(fields.items())
    merged: dict[Any, tuple[Any, Any]] = {hashable(k): (k, v) for k, v in (prev or [])}
    merged.update({hashable(k): (k, v) for k, v in added})
    for k in gone:
        merged.pop(k, None)
    return sorted_cells(merged.values(), cell_key_type(type_text))
