"""INSERT/UPDATE/DELETE -> ``model.PartitionMutation`` (Cassandra write semantics).

Timestamps: T for cells/markers/row tombstones; a collection overwrite (SET c = ..., INSERT) writes a
collection tombstone at T-1, ``DELETE c`` one at T (shared/docs/scylla-cdc.md §1.3). List cells get
fresh timeuuid keys (appends increasing from now, prepends decreasing from 2010-01-01 as Cassandra).
Read-before-write (list index/removal, counters) goes through ``Writer.current``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

from tests.scylla_emulator.api import UNSET, CqlError, ErrorCode
from tests.scylla_emulator.catalog import TableRt
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cqltypes_util import CType, sort_key_fn, timeuuid_key
from tests.scylla_emulator.engine_bind import ListIndex, Terms, timeuuid_from_ticks
from tests.scylla_emulator.model import (
    AtomicCell,
    CollectionMutation,
    PartitionMutation,
    RangeTombstone,
    RowMutation,
)
from tests.scylla_emulator.storage import _merge_atomic

__all__ = ["WriteSpec", "Writer", "merge_mutations"]

_UUID_EPOCH = 0x01B21DD213814000
_PREPEND_BASE_TICKS = 1262304000000 * 10_000 + _UUID_EPOCH  # 2010-01-01 in 100 ns ticks
_T_INT = CType("int")
_T_BIGINT = CType("bigint")
MAX_TTL = 20 * 365 * 86400


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


class WriteSpec:
    """Result of analysing one DML statement: mutations plus what LWT needs."""

    def __init__(self, rt: TableRt, mutations: list[PartitionMutation]) -> None:
        self.rt = rt
        self.mutations = mutations
        self.pk: tuple[Any, ...] | None = None
        self.ck: tuple[Any, ...] | None = None


class Writer:
    """Builds mutations. ``current(rt, pk, ck)`` returns the live row dict (read_row contract)."""

    def __init__(
        self,
        now_us: Callable[[], int],
        current: Callable[[TableRt, tuple[Any, ...], tuple[Any, ...] | None], dict[str, Any] | None],
    ) -> None:
        self.now_us = now_us
        self.current = current
        self._last_tick = 0
        self._prepend_ticks = 0
        self._node = random.getrandbits(62) | (1 << 63)  # IETF variant, fixed "node"

    # -------------------------------------------------------------------------- list cell keys
    def append_keys(self, n: int) -> list[Any]:
        tick = self.now_us() * 10 + _UUID_EPOCH
        if tick <= self._last_tick:
            tick = self._last_tick + 1
        self._last_tick = tick + n - 1
        return [timeuuid_from_ticks(tick + i, self._node) for i in range(n)]

    def prepend_keys(self, n: int) -> list[Any]:
        """Keys before every existing prepend: later prepends sort first, literal order kept."""
        self._prepend_ticks += n
        start = _PREPEND_BASE_TICKS - self._prepend_ticks
        return [timeuuid_from_ticks(start + i, self._node) for i in range(n)]

    # -------------------------------------------------------------------------- key resolution
    def partition_keys(self, rt: TableRt, rels: list[A.Relation], terms: Terms) -> list[tuple[Any, ...]]:
        per_col: list[list[Any]] = []
        for c in rt.pk_names:
            vals = _eq_or_in(rels, c, rt, terms)
            if vals is None:
                raise inv(f"Some partition key parts are missing: {c}")
            for v in vals:
                if v is None:
                    raise inv(f"Invalid null value in condition for column {c}")
            per_col.append(vals)
        return [tuple(p) for p in itertools.product(*per_col)]

    def make_pm(self, rt: TableRt, pk: tuple[Any, ...]) -> PartitionMutation:
        pkb = rt.pk_bytes(pk)
        return PartitionMutation(rt.keyspace, rt.name, pk, rt.token_of(pk, pkb))

    # -------------------------------------------------------------------------- cells
    def value_cells(  # noqa: PLR0917
        self, rt: TableRt, col: str, t: CType, value: Any, ts: int, ttl: int | None, overwrite: bool
    ) -> AtomicCell | CollectionMutation:
        if not t.multicell:
            if value is None:
                return AtomicCell(ts, None, live=False)
            return AtomicCell(ts, value, ttl=ttl)
        cm = CollectionMutation(tombstone_ts=ts - 1 if overwrite else None)
        if value is None:
            return cm
        n = t.name
        if n == "list":
            keys = self.append_keys(len(value))
            cm.cells = [(k, AtomicCell(ts, v, ttl=ttl)) for k, v in zip(keys, value, strict=True)]
        elif n == "set":
            cm.cells = [(v, AtomicCell(ts, None, ttl=ttl)) for v in value]
        elif n == "map":
            cm.cells = [(k, AtomicCell(ts, v, ttl=ttl)) for k, v in value.items()]
        else:  # udt
            cm.cells = [(i, AtomicCell(ts, v, ttl=ttl)) for i, v in enumerate(value) if v is not None]
        return cm

    # -------------------------------------------------------------------------- statements
    def insert(self, rt: TableRt, st: A.Insert, terms: Terms, ts: int, ttl: int | None) -> WriteSpec:
        vals: dict[str, Any] = {}
        for c, term in zip(st.columns, st.values, strict=True):
            if c in vals:
                raise inv(f"Multiple definitions found for column {c}")
            col = rt.column(c)
            v = terms.value(term, rt.types[c])
            if col.kind in ("partition_key", "clustering"):
                if v is UNSET:
                    raise inv(f"Invalid unset value for column {c}")
                if v is None:
                    raise inv(f"Invalid null value in condition for column {c}")
            vals[c] = v
        missing_pk = [c for c in rt.pk_names if c not in vals]
        if missing_pk:
            raise inv(f"Some partition key parts are missing: {', '.join(missing_pk)}")
        missing_ck = [c for c in rt.ck_names if c not in vals]
        only_static = all(rt.cols[c].kind in ("partition_key", "static") for c in vals)
        if missing_ck and not (only_static and len(missing_ck) == len(rt.ck_names)):
            raise inv(f"Some clustering keys are missing: {', '.join(missing_ck)}")
        pk = tuple(vals[c] for c in rt.pk_names)
        pm = self.make_pm(rt, pk)
        row: RowMutation | None = None
        if not missing_ck:
            ck = tuple(vals[c] for c in rt.ck_names)
            row = RowMutation(ck)
            if not rt.is_counter:
                row.marker = AtomicCell(ts, ttl=ttl)
            pm.rows.append(row)
        elif not rt.ck_names:
            row = RowMutation(())
            row.marker = AtomicCell(ts, ttl=ttl)
            pm.rows.append(row)
        for c, v in vals.items():
            col = rt.cols[c]
            if col.kind in ("partition_key", "clustering") or v is UNSET:
                continue
            t = rt.types[c]
            if t.name == "counter":
                raise inv("INSERT statements are not allowed on counter tables, use UPDATE instead")
            cell = self.value_cells(rt, c, t, v, ts, ttl, overwrite=True)
            if col.kind == "static":
                if pm.static_row is None:
                    pm.static_row = RowMutation(None)
                pm.static_row.cells[c] = cell
            else:
                assert row is not None
                row.cells[c] = cell
        spec = WriteSpec(rt, [pm])
        spec.pk = pk
        spec.ck = row.clustering if row is not None and rt.ck_names else (() if row is not None else None)
        return spec

    def _ck_eq(self, rt: TableRt, rels: list[A.Relation], terms: Terms) -> list[tuple[Any, ...]] | None:
        per: list[list[Any]] = []
        for c in rt.ck_names:
            vals = _eq_or_in(rels, c, rt, terms)
            if vals is None:
                break
            for v in vals:
                if v is None:
                    raise inv(f"Invalid null value in condition for column {c}")
            per.append(vals)
        if len(per) != len(rt.ck_names):
            return None
        return [tuple(p) for p in itertools.product(*per)]

    def update(self, rt: TableRt, st: A.Update, terms: Terms, ts: int, ttl: int | None) -> WriteSpec:
        _check_where_columns(rt, st.where)
        pks = self.partition_keys(rt, st.where, terms)
        cks = self._ck_eq(rt, st.where, terms)
        touches_regular = False
        for a in st.assignments:
            col = rt.column(a.column)
            if col.kind in ("partition_key", "clustering"):
                raise inv(f"PRIMARY KEY part {a.column} found in SET part")
            if col.kind == "regular":
                touches_regular = True
        if cks is None and (touches_regular or not rt.ck_names):
            missing = [c for c in rt.ck_names if _eq_or_in(st.where, c, rt, terms) is None]
            raise inv(f"Some clustering keys are missing: {', '.join(missing)}")
        muts = []
        for pk in pks:
            pm = self.make_pm(rt, pk)
            targets: list[tuple[tuple[Any, ...] | None, RowMutation]] = []
            if cks is not None and (
                touches_regular or not any(rt.cols[a.column].kind == "static" for a in st.assignments)
            ):
                for ck in cks:
                    rm = RowMutation(ck)
                    pm.rows.append(rm)
                    targets.append((ck, rm))
            for a in st.assignments:
                col = rt.cols[a.column]
                if col.kind == "static":
                    if pm.static_row is None:
                        pm.static_row = RowMutation(None)
                    self._assign(rt, pk, None, pm.static_row, a, terms, ts, ttl)
                else:
                    for ck, rm in targets:
                        self._assign(rt, pk, ck, rm, a, terms, ts, ttl)
            muts.append(pm)
        spec = WriteSpec(rt, muts)
        spec.pk = pks[0] if len(pks) == 1 else None
        spec.ck = cks[0] if cks is not None and len(cks) == 1 else None
        return spec

    def _assign(  # noqa: PLR0917
        self,
        rt: TableRt,
        pk: tuple[Any, ...],
        ck: tuple[Any, ...] | None,
        rm: RowMutation,
        a: Any,
        terms: Terms,
        ts: int,
        ttl: int | None,
    ) -> None:
        name = a.column
        t = rt.types[name]
        if isinstance(a, A.SetValue):
            if t.name == "counter":
                raise inv(
                    f"Cannot set the value of counter column {name} (counters can only be incremented/"
                    "decremented, not set)"
                )
            v = terms.value(a.value, t)
            if v is UNSET:
                return
            rm.cells[name] = self.value_cells(rt, name, t, v, ts, ttl, overwrite=True)
            return
        if isinstance(a, A.SetField):
            if t.name != "udt":
                raise inv(f"Invalid operation ({name}.{a.field} = ...) for non-UDT column {name}")
            if a.field not in t.field_names:
                raise inv(f"UDT column {name} does not have a field named {a.field}")
            if not t.multicell:
                raise inv(f"Invalid operation ({name}.{a.field} = ...) for frozen UDT column {name}")
            idx = t.field_names.index(a.field)
            v = terms.value(a.value, t.params[idx])
            if v is UNSET:
                return
            cell = AtomicCell(ts, None, live=False) if v is None else AtomicCell(ts, v, ttl=ttl)
            self._coll(rm, name).cells.append((idx, cell))
            return
        if isinstance(a, A.SetElement):
            if t.name not in ("list", "map") or not t.multicell:
                raise inv(
                    f"Invalid operation ({name}[?] = ...) for non-collection column {name}"
                    if t.name not in ("list", "map", "set")
                    else f"Invalid operation ({name}[?] = ...) for frozen collection column {name}"
                    if t.frozen
                    else f"Invalid operation ({name}[?] = ...) for set column {name}"
                )
            if t.name == "map":
                k = terms.value(a.key, t.params[0])
                if k is None:
                    raise inv("Invalid null map key")
                v = terms.value(a.value, t.params[1])
            else:
                kraw = a.key
                if isinstance(kraw, A.FuncCall) and kraw.name == "scylla_timeuuid_list_index":
                    li = terms.call(kraw)
                    assert isinstance(li, ListIndex)
                    k = li.key
                else:
                    idx = terms.value(kraw, _T_INT)
                    if idx is None:
                        raise inv("Invalid null value for list index")
                    cur = self._list_cells(rt, pk, ck, name)
                    if idx < 0 or idx >= len(cur):
                        raise inv(f"List index {idx} out of bound, list has size {len(cur)}")
                    k = cur[idx][0]
                v = terms.value(a.value, t.params[0])
            if v is UNSET:
                return
            cell = AtomicCell(ts, None, live=False) if v is None else AtomicCell(ts, v, ttl=ttl)
            self._coll(rm, name).cells.append((k, cell))
            return
        if isinstance(a, A.AddTo | A.Prepend | A.RemoveFrom):
            if t.name == "counter":
                if isinstance(a, A.Prepend):
                    raise inv(f"Invalid operation for counter column {name}")
                d = terms.value(a.value, _T_BIGINT)
                if d is None:
                    raise inv("Invalid null value for counter increment/decrement")
                cur = self.current(rt, pk, ck) or {}
                base = cur.get(name) or 0
                rm.cells[name] = AtomicCell(ts, base + (d if isinstance(a, A.AddTo) else -d))
                return
            if not t.is_collection:
                raise inv(
                    f"Invalid operation ({name} = {name} {'-' if isinstance(a, A.RemoveFrom) else '+'} ?) "
                    f"for non counter column {name}"
                )
            if t.frozen:
                raise inv(f"Invalid operation ({name} = {name} + ?) for frozen collection column {name}")
            if isinstance(a, A.Prepend) and t.name != "list":
                raise inv(f"Invalid operation ({name} = ? + {name}) for non list column {name}")
            vt = (
                CType("set", (t.params[0],), True) if (isinstance(a, A.RemoveFrom) and t.name == "map") else t
            )
            v = terms.value(a.value, vt)
            if v is UNSET:
                return
            if v is None:
                if isinstance(a, A.RemoveFrom):
                    return
                raise inv(f"Invalid null value for collection {name} in an append/remove operation")
            cm = self._coll(rm, name)
            if isinstance(a, A.AddTo):
                if t.name == "list":
                    keys = self.append_keys(len(v))
                    cm.cells += [(k, AtomicCell(ts, x, ttl=ttl)) for k, x in zip(keys, v, strict=True)]
                elif t.name == "set":
                    cm.cells += [(x, AtomicCell(ts, None, ttl=ttl)) for x in v]
                else:
                    cm.cells += [(k, AtomicCell(ts, x, ttl=ttl)) for k, x in v.items()]
            elif isinstance(a, A.Prepend):
                keys = self.prepend_keys(len(v))
                cm.cells += [(k, AtomicCell(ts, x, ttl=ttl)) for k, x in zip(keys, v, strict=True)]
            elif t.name == "list":
                drop = list(v)
                for k, x in self._list_cells(rt, pk, ck, name):
                    if x in drop:
                        cm.cells.append((k, AtomicCell(ts, None, live=False)))
            else:
                cm.cells += [(x, AtomicCell(ts, None, live=False)) for x in v]
            return
        raise inv(f"Unsupported assignment {a!r}")  # pragma: no cover

    @staticmethod
    def _coll(rm: RowMutation, name: str) -> CollectionMutation:
        c = rm.cells.get(name)
        if not isinstance(c, CollectionMutation):
            c = CollectionMutation()
            rm.cells[name] = c
        return c

    def _list_cells(
        self, rt: TableRt, pk: tuple[Any, ...], ck: tuple[Any, ...] | None, name: str
    ) -> list[tuple[Any, Any]]:
        cur = self.current(rt, pk, ck) or {}
        cells = cur.get(name) or []
        return sorted(cells, key=lambda kv: timeuuid_key(kv[0]))

    def delete(self, rt: TableRt, st: A.Delete, terms: Terms, ts: int) -> WriteSpec:
        _check_where_columns(rt, st.where)
        pks = self.partition_keys(rt, st.where, terms)
        cks = self._ck_eq(rt, st.where, terms)
        muts = []
        spec = WriteSpec(rt, muts)
        spec.pk = pks[0] if len(pks) == 1 else None
        if st.targets:
            static_only = all(rt.column(tg.column).kind == "static" for tg in st.targets)
            for tg in st.targets:
                if rt.cols[tg.column].kind in ("partition_key", "clustering"):
                    raise inv(
                        f"Invalid identifier {tg.column} for deletion (should not be a PRIMARY KEY part)"
                    )
            if cks is None and not static_only:
                if _has_slice(st.where, rt):
                    raise inv("Range deletions are not supported for specific columns")
                missing = [c for c in rt.ck_names if _eq_or_in(st.where, c, rt, terms) is None]
                raise inv(f"Some clustering keys are missing: {', '.join(missing)}")
            for pk in pks:
                pm = self.make_pm(rt, pk)
                rows: list[tuple[tuple[Any, ...] | None, RowMutation]] = []
                if not static_only:
                    assert cks is not None
                    for ck in cks:
                        rm = RowMutation(ck)
                        pm.rows.append(rm)
                        rows.append((ck, rm))
                for tg in st.targets:
                    if rt.cols[tg.column].kind == "static":
                        if pm.static_row is None:
                            pm.static_row = RowMutation(None)
                        self._delete_target(rt, pk, None, pm.static_row, tg, terms, ts)
                    else:
                        for ck, rm in rows:
                            self._delete_target(rt, pk, ck, rm, tg, terms, ts)
                muts.append(pm)
            spec.ck = cks[0] if cks is not None and len(cks) == 1 else None
            return spec
        if cks is not None and rt.ck_names:
            for pk in pks:
                pm = self.make_pm(rt, pk)
                pm.rows = [RowMutation(ck, row_tombstone_ts=ts) for ck in cks]
                muts.append(pm)
            spec.ck = cks[0] if len(cks) == 1 else None
            return spec
        rng = self._ck_range(rt, st.where, terms)
        for pk in pks:
            pm = self.make_pm(rt, pk)
            if rng is None:
                pm.partition_tombstone_ts = ts
            else:
                pm.range_tombstones = [RangeTombstone(*r, ts=ts) for r in rng]
            muts.append(pm)
        return spec

    def _delete_target(  # noqa: PLR0917
        self,
        rt: TableRt,
        pk: tuple[Any, ...],
        ck: tuple[Any, ...] | None,
        rm: RowMutation,
        tg: A.DeleteTarget,
        terms: Terms,
        ts: int,
    ) -> None:
        name = tg.column
        t = rt.types[name]
        if tg.key is None and tg.field is None:
            if t.multicell:
                c = self._coll(rm, name)
                c.tombstone_ts = ts if c.tombstone_ts is None else max(c.tombstone_ts, ts)
            else:
                rm.cells[name] = AtomicCell(ts, None, live=False)
            return
        if tg.field is not None:
            if t.name != "udt" or not t.multicell:
                raise inv(
                    f"Invalid deletion operation for non-UDT column {name}"
                    if t.name != "udt"
                    else f"Frozen UDT column {name} does not support field deletion"
                )
            if tg.field not in t.field_names:
                raise inv(f"UDT column {name} does not have a field named {tg.field}")
            self._coll(rm, name).cells.append(
                (t.field_names.index(tg.field), AtomicCell(ts, None, live=False))
            )
            return
        if not t.is_collection:
            raise inv(f"Invalid deletion operation for non collection column {name}")
        if t.frozen:
            raise inv(f"Invalid deletion operation for frozen collection column {name}")
        if t.name == "list":
            if isinstance(tg.key, A.FuncCall) and tg.key.name == "scylla_timeuuid_list_index":
                k = terms.call(tg.key).key
            else:
                idx = terms.value(tg.key, _T_INT)
                cur = self._list_cells(rt, pk, ck, name)
                if idx is None or idx < 0 or idx >= len(cur):
                    raise inv(f"List index {idx} out of bound, list has size {len(cur)}")
                k = cur[idx][0]
        else:
            k = terms.value(tg.key, t.params[0])
            if k is None:
                raise inv(f"Invalid null value for {'map key' if t.name == 'map' else 'set element'}")
        self._coll(rm, name).cells.append((k, AtomicCell(ts, None, live=False)))

    def _ck_range(
        self, rt: TableRt, rels: list[A.Relation], terms: Terms
    ) -> list[tuple[tuple[Any, ...], bool, tuple[Any, ...], bool]] | None:
        """Clustering ranges of a range delete (clustering order); None = whole partition."""
        prefixes: list[tuple[Any, ...]] = [()]
        i = 0
        for c in rt.ck_names:
            vals = _eq_or_in(rels, c, rt, terms)
            if vals is None:
                break
            prefixes = [(*p, v) for p in prefixes for v in vals]
            i += 1
        lo = hi = None
        lo_incl = hi_incl = True
        if i < len(rt.ck_names):
            c = rt.ck_names[i]
            t = rt.types[c]
            for r in rels:
                if r.lhs == ("col", c) and r.op in ("<", "<=", ">", ">="):
                    v = terms.value(r.rhs, t)
                    if r.op in (">", ">="):
                        lo, lo_incl = v, r.op == ">="
                    else:
                        hi, hi_incl = v, r.op == "<="
                elif r.lhs[0] == "multi":
                    raise inv("Unsupported by the Scylla emulator: multi-column range deletions")
            for r in rels:
                if r.lhs[0] == "col" and r.lhs[1] in rt.ck_names[i + 1 :]:
                    raise inv(
                        f'PRIMARY KEY column "{r.lhs[1]}" cannot be restricted as preceding column '
                        f'"{c}" is not restricted'
                    )
            if rt.cols[c].clustering_order == "desc":
                lo, hi, lo_incl, hi_incl = hi, lo, hi_incl, lo_incl
        if i == 0 and lo is None and hi is None:
            return None
        out = []
        for p in prefixes:
            start = p + ((lo,) if lo is not None else ())
            end = p + ((hi,) if hi is not None else ())
            out.append((start, lo_incl if lo is not None else True, end, hi_incl if hi is not None else True))
        return out


# ------------------------------------------------------------------------------ helpers
def _check_where_columns(rt: TableRt, rels: list[A.Relation]) -> None:
    for r in rels:
        kind, lhs = r.lhs
        if kind == "token":
            raise inv("The token function cannot be used in WHERE clauses for UPDATE and DELETE statements")
        names = lhs if kind == "multi" else [lhs]
        for n in names:
            col = rt.column(n)
            if col.kind not in ("partition_key", "clustering"):
                raise inv(f"Non PRIMARY KEY columns found in where clause: {n} ")
        if kind == "col" and rt.cols[lhs].kind == "partition_key" and r.op not in ("=", "in"):
            raise inv(
                "Only EQ and IN relation are supported on the partition key (unless you use the "
                "token() function)"
            )


def _has_slice(rels: list[A.Relation], rt: TableRt) -> bool:
    return any(r.op in ("<", "<=", ">", ">=") for r in rels)


def _eq_or_in(rels: list[A.Relation], col: str, rt: TableRt, terms: Terms) -> list[Any] | None:
    t = rt.types[col]
    for r in rels:
        if r.lhs == ("col", col):
            if r.op == "=":
                v = terms.value(r.rhs, t)
                if v is UNSET:
                    raise inv(f"Invalid unset value for column {col}")
                return [v]
            if r.op == "in":
                if isinstance(r.rhs, A.Bind):
                    lst = terms.value(r.rhs, CType("list", (t,), True))
                    if lst is None:
                        raise inv(f"Invalid null value for column {col}")
                    vals = list(lst)
                else:
                    vals = [terms.value(x, t) for x in r.rhs]
                key = sort_key_fn(t)
                seen: dict[Any, Any] = {}
                for v in vals:
                    seen.setdefault(repr(key(v)) if v is not None else None, v)
                return sorted(seen.values(), key=key) if None not in seen else vals
    return None


def merge_mutations(
    muts: list[PartitionMutation],
    key_of: Callable[[PartitionMutation], Any],
    ck_key: Callable[[str, str, tuple[Any, ...]], Any],
) -> list[PartitionMutation]:
    """Merge mutations of the same (table, partition) as a batch does (cells: last write wins)."""
    out: dict[Any, PartitionMutation] = {}
    for m in muts:
        k = key_of(m)
        cur = out.get(k)
        if cur is None:
            out[k] = PartitionMutation(
                m.keyspace,
                m.table,
                m.partition_key,
                m.token,
                m.partition_tombstone_ts,
                m.static_row,
                list(m.rows),
                list(m.range_tombstones),
            )
            continue
        if m.partition_tombstone_ts is not None:
            cur.partition_tombstone_ts = max(
                cur.partition_tombstone_ts or m.partition_tombstone_ts, m.partition_tombstone_ts
            )
        if m.static_row is not None:
            cur.static_row = (
                m.static_row if cur.static_row is None else _merge_rows(cur.static_row, m.static_row)
            )
        index = {
            ck_key(m.keyspace, m.table, r.clustering): i
            for i, r in enumerate(cur.rows)
            if r.clustering is not None
        }
        for r in m.rows:
            assert r.clustering is not None
            i = index.get(ck_key(m.keyspace, m.table, r.clustering))
            if i is None:
                index[ck_key(m.keyspace, m.table, r.clustering)] = len(cur.rows)
                cur.rows.append(r)
            else:
                cur.rows[i] = _merge_rows(cur.rows[i], r)
        cur.range_tombstones.extend(m.range_tombstones)
    return list(out.values())


def _merge_rows(a: RowMutation, b: RowMutation) -> RowMutation:
    r = RowMutation(a.clustering, a.marker, a.row_tombstone_ts, dict(a.cells))
    if b.marker is not None:
        r.marker = b.marker if r.marker is None else _merge_atomic(r.marker, b.marker)
    if b.row_tombstone_ts is not None:
        r.row_tombstone_ts = max(r.row_tombstone_ts or b.row_tombstone_ts, b.row_tombstone_ts)
    for name, c in b.cells.items():
        old = r.cells.get(name)
        if old is None:
            r.cells[name] = c
        elif isinstance(c, AtomicCell) and isinstance(old, AtomicCell):
            r.cells[name] = _merge_atomic(old, c)
        elif isinstance(c, CollectionMutation) and isinstance(old, CollectionMutation):
            ts = [x for x in (old.tombstone_ts, c.tombstone_ts) if x is not None]
            r.cells[name] = CollectionMutation(max(ts) if ts else None, old.cells + c.cells)
        else:
            r.cells[name] = c
    return r
