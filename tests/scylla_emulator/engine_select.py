"""SELECT planning and execution.

``plan_select`` turns a ``Select`` AST + bound values into a ``Plan`` (which partitions, clustering
slices as sort-key bisection bounds, residual filters, selectors); ``run_select`` walks storage and
returns one page. Paging state (engine-owned, opaque to the client) is a msgpack list
``[token, pkbytes, last clustering (serialized) | None, rows emitted, rows emitted in partition]``;
the next page resumes strictly after the last returned row (a CDC group may be split across pages).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from cassandra import util as CU

from tests.scylla_emulator.api import UNSET, ColumnSpec, CqlError, ErrorCode, RowsResult
from tests.scylla_emulator.catalog import TableRt
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cqltypes_util import CType, normalize, sort_key_fn, timeuuid_key
from tests.scylla_emulator.engine_bind import FUNCTIONS, Terms, _ts_arg
from tests.scylla_emulator.model import AtomicCell
from tests.scylla_emulator.storage import NO_TS, CollCells, Partition, Row, live_cells, row_is_live

__all__ = ["Plan", "multicell_value", "plan_select", "run_select"]

_FILTERING = (
    "Cannot execute this query as it might involve data filtering and thus may have unpredictable "
    "performance. If you want to execute this query despite the performance unpredictability, "
    "use ALLOW FILTERING"
)
T_BIGINT = CType("bigint")
T_INT = CType("int")


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


def multicell_value(t: CType, cells: list[tuple[Any, Any]]) -> Any:
    """Value of a non-frozen collection/UDT from its live cells (None when empty)."""
    if not cells:
        return None
    n = t.name
    if n == "list":
        cells.sort(key=lambda kv: timeuuid_key(kv[0]))
        return [v for _, v in cells]
    if n == "set":
        k = sort_key_fn(t.params[0])
        return CU.SortedSet(sorted((e for e, _ in cells), key=k))
    if n == "map":
        k = sort_key_fn(t.params[0])
        cells.sort(key=lambda kv: k(kv[0]))
        return dict(cells)
    vals: list[Any] = [None] * len(t.params)
    for i, v in cells:
        if isinstance(i, int) and i < len(vals):
            vals[i] = v
    cls = t.cass.tuple_type
    return cls(*vals) if cls is not None else tuple(vals)


# --------------------------------------------------------------------------------------- plan
class Plan:
    def __init__(self, rt: TableRt) -> None:
        self.rt = rt
        self.keys: list[tuple[int, bytes, tuple[Any, ...]]] | None = None  # explicit partitions
        self.token_lo: int | None = None
        self.token_lo_incl = True
        self.token_hi: int | None = None
        self.token_hi_incl = True
        self.ranges: list[tuple[Any, bool, Any, bool]] | None = None  # sort-key slices; None = all rows
        self.ck_restricted = False
        self.filters: list[Callable[[dict[str, Any]], bool]] = []
        self.filter_cols: list[str] = []
        self.reverse = False
        self.order_by_in = False
        self.limit: int | None = None
        self.ppl: int | None = None
        self.distinct = False
        self.fetch: list[tuple[int, Any, Any]] = []  # (code, key, type)
        self.fetch_names: list[str] = []
        self.columns: list[ColumnSpec] = []
        self.selectors: list[tuple[str, Any]] = []  # ('v', idx) | ('f', callable(vals)) | ('agg', ...)
        self.aggregate = False
        self.simple = True  # output row == fetched values
        self.empty = False


def _fetch_index(plan: Plan, code: int, key: Any, t: Any, name: str) -> int:
    for i, (c, k, _) in enumerate(plan.fetch):
        if c == code and k == key:
            return i
    plan.fetch.append((code, key, t))
    plan.fetch_names.append(name)
    return len(plan.fetch) - 1


def _col_fetch(plan: Plan, name: str) -> int:
    rt = plan.rt
    col = rt.column(name)
    t = rt.types[name]
    if col.kind == "partition_key":
        return _fetch_index(plan, 0, rt.pk_names.index(name), t, name)
    if col.kind == "clustering":
        return _fetch_index(plan, 1, rt.ck_names.index(name), t, name)
    static = col.kind == "static"
    if t.multicell:
        return _fetch_index(plan, 5 if static else 3, name, t, name)
    return _fetch_index(plan, 4 if static else 2, name, t, name)


_COMPARE = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def plan_select(rt: TableRt, st: A.Select, terms: Terms) -> Plan:
    plan = Plan(rt)
    if st.json:
        raise inv("Unsupported by the Scylla emulator: SELECT JSON")
    if st.group_by:
        raise inv("Unsupported by the Scylla emulator: GROUP BY")
    plan.distinct = st.distinct
    _plan_where(plan, rt, st, terms)
    _plan_selectors(plan, rt, st)
    if st.limit is not None:
        lim = terms.value(st.limit, T_INT)
        if lim is None or lim is UNSET or lim <= 0:
            raise inv("LIMIT must be strictly positive")
        plan.limit = lim
    if st.per_partition_limit is not None:
        lim = terms.value(st.per_partition_limit, T_INT)
        if lim is None or lim is UNSET or lim <= 0:
            raise inv("PER PARTITION LIMIT must be strictly positive")
        plan.ppl = lim
    if st.order_by:
        if plan.keys is None:
            raise inv("ORDER BY is only supported when the partition key is restricted by an EQ or an IN.")
        flips = set()
        for i, (c, d) in enumerate(st.order_by):
            col = rt.cols.get(c)
            if col is None:
                raise inv(f"Undefined column name {c}")
            if col.kind != "clustering":
                raise inv(
                    f"Order by is currently only supported on the clustered columns of the PRIMARY KEY, "
                    f"got {c}"
                )
            if rt.ck_names.index(c) != i:
                raise inv(
                    "Order by currently only supports the ordering of columns following their declared "
                    "order in the PRIMARY KEY"
                )
            flips.add(d != col.clustering_order)
        if len(flips) > 1:
            raise inv("Unsupported order by relation")
        plan.reverse = flips.pop()
        plan.order_by_in = len(plan.keys) > 1
    return plan


def _plan_where(plan: Plan, rt: TableRt, st: A.Select, terms: Terms) -> None:
    pk_eq: dict[str, list[Any]] = {}
    pk_other = False
    ck_rel: dict[str, list[A.Relation]] = {}
    multi: list[A.Relation] = []
    needs_filtering = False
    for r in st.where:
        kind, lhs = r.lhs
        if kind == "token":
            if list(lhs) != rt.pk_names:
                raise inv(
                    "The token() function must be applied to all partition key components or none of them"
                )
            v = terms.value(r.rhs, T_BIGINT)
            if v is None or v is UNSET:
                raise inv("Invalid null value for partition key token")
            if r.op in (">", ">="):
                if plan.token_lo is None or v >= plan.token_lo:
                    plan.token_lo, plan.token_lo_incl = v, r.op == ">="
            elif r.op in ("<", "<="):
                if plan.token_hi is None or v <= plan.token_hi:
                    plan.token_hi, plan.token_hi_incl = v, r.op == "<="
            elif r.op == "=":
                plan.token_lo = plan.token_hi = v
                plan.token_lo_incl = plan.token_hi_incl = True
            else:
                raise inv(f"Unsupported operator {r.op} on token()")
            continue
        if kind == "multi":
            for c in lhs:
                if rt.column(c).kind != "clustering":
                    raise inv(
                        f"Multi-column relations can only be applied to clustering columns but was applied "
                        f"to: {c}"
                    )
            multi.append(r)
            continue
        col = rt.column(lhs)
        if col.kind == "partition_key":
            if r.op in ("=", "in") and lhs not in pk_eq:
                vals = _values(r, rt.types[lhs], terms)
                pk_eq[lhs] = vals
            else:
                pk_other = True
                _add_filter(plan, rt, r, terms)
        elif col.kind == "clustering":
            ck_rel.setdefault(lhs, []).append(r)
        else:
            needs_filtering = True
            _add_filter(plan, rt, r, terms)
    # partitions
    if len(pk_eq) == len(rt.pk_names) and not pk_other:
        if plan.token_lo is not None or plan.token_hi is not None:
            raise inv(
                'Columns "' + ",".join(rt.pk_names) + '" cannot be restricted by both a normal relation '
                "and a token relation"
            )
        combos: list[tuple[Any, ...]] = [()]
        for c in rt.pk_names:
            combos = [(*p, v) for p in combos for v in pk_eq[c]]
        seen: dict[bytes, tuple[int, bytes, tuple[Any, ...]]] = {}
        for pk in combos:
            if any(v is None for v in pk):
                raise inv("Invalid null value in condition for column " + rt.pk_names[0])
            pkb = rt.pk_bytes(pk)
            seen[pkb] = (rt.token_of(pk, pkb), pkb, pk)
        plan.keys = sorted(seen.values(), key=lambda e: (e[0], e[1]))
    elif pk_eq:
        needs_filtering = True
        for c, vals in pk_eq.items():
            _add_filter(plan, rt, A.Relation(("col", c), "in", None), terms, vals)
    # clustering
    prefixes: list[tuple[Any, ...]] = [()]
    i = 0
    ck_done: set[int] = set()
    while i < len(rt.ck_names):
        c = rt.ck_names[i]
        rels = ck_rel.get(c, [])
        eq = [r for r in rels if r.op in ("=", "in")]
        if not eq:
            break
        vals = _values(eq[0], rt.types[c], terms)
        key = sort_key_fn(rt.types[c])
        vals = sorted({repr(key(v)): v for v in vals}.values(), key=key)
        prefixes = [(*p, v) for p in prefixes for v in vals]
        ck_done.add(id(eq[0]))
        i += 1
    lo: tuple[Any, ...] | None = None
    hi: tuple[Any, ...] | None = None
    lo_incl = hi_incl = True
    slice_on: list[str] = []
    for r in multi:
        cols = r.lhs[1]
        if rt.ck_names[i : i + len(cols)] != list(cols) or len(prefixes) != 1:
            raise inv("Clustering columns must appear in the PRIMARY KEY order in multi-column relations")
        tt = CType("tuple", tuple(rt.types[c] for c in cols), True)
        if r.op in ("=", "in"):
            vals = _values(r, tt, terms)
            prefixes = [prefixes[0] + tuple(v) for v in vals]
            i += len(cols)
            continue
        v = terms.value(r.rhs, tt)
        orders = {rt.cols[c].clustering_order for c in cols}
        if len(orders) > 1:
            needs_filtering = True
            _add_filter(plan, rt, r, terms)
            continue
        slice_on = list(cols)
        if r.op in (">", ">="):
            lo, lo_incl = tuple(v), r.op == ">="
        else:
            hi, hi_incl = tuple(v), r.op == "<="
    if not slice_on and i < len(rt.ck_names):
        c = rt.ck_names[i]
        for r in ck_rel.get(c, []):
            if r.op in (">", ">=", "<", "<="):
                v = terms.value(r.rhs, rt.types[c])
                if v is None or v is UNSET:
                    raise inv(f"Invalid null value in condition for column {c}")
                slice_on = [c]
                if r.op in (">", ">="):
                    lo, lo_incl = (v,), r.op == ">="
                else:
                    hi, hi_incl = (v,), r.op == "<="
                ck_done.add(id(r))
            elif r.op not in ("=", "in"):
                needs_filtering = True
                _add_filter(plan, rt, r, terms)
                ck_done.add(id(r))
    for c, rels in ck_rel.items():
        for r in rels:
            if id(r) not in ck_done:
                idx = rt.ck_names.index(c)
                if idx >= i + len(slice_on) or r.op not in (">", ">=", "<", "<=", "=", "in"):  # noqa: SIM102
                    if not st.allow_filtering:
                        prev = rt.ck_names[i] if i < len(rt.ck_names) else c
                        raise inv(
                            f'PRIMARY KEY column "{c}" cannot be restricted as preceding column '
                            f'"{prev}" is not restricted'
                            if r.op in ("=", "in", ">", ">=", "<", "<=")
                            else _FILTERING
                        )
                needs_filtering = True
                _add_filter(plan, rt, r, terms)
    if i > 0 or slice_on:
        plan.ck_restricted = True
        desc = bool(slice_on) and rt.cols[slice_on[0]].clustering_order == "desc"
        out: list[tuple[Any, bool, Any, bool]] = []
        for p in prefixes:
            a = p + lo if lo is not None else p
            b = p + hi if hi is not None else p
            ai = lo_incl if lo is not None else True
            bi = hi_incl if hi is not None else True
            if desc:
                a, b, ai, bi = b, a, bi, ai
            out.append((rt.prefix_key(a) if a else None, ai, rt.prefix_key(b) if b else None, bi))
        plan.ranges = out
    if plan.keys is None and plan.ck_restricted:
        needs_filtering = True
    if needs_filtering and not st.allow_filtering:
        raise inv(_FILTERING)


def _values(r: A.Relation, t: CType, terms: Terms) -> list[Any]:
    if r.op == "=":
        v = terms.value(r.rhs, t)
        if v is UNSET:
            raise inv("Invalid unset value")
        return [v]
    if isinstance(r.rhs, A.Bind):
        lst = terms.value(r.rhs, CType("list", (t,), True))
        if lst is None:
            raise inv("Invalid null value for IN restriction")
        return [normalize(x, t) for x in lst]
    return [terms.value(x, t) for x in r.rhs]


def _add_filter(
    plan: Plan, rt: TableRt, r: A.Relation, terms: Terms, in_vals: list[Any] | None = None
) -> None:
    kind, lhs = r.lhs
    if kind == "multi":
        cols = list(lhs)
        tt = CType("tuple", tuple(rt.types[c] for c in cols), True)
        keys = [sort_key_fn(rt.types[c]) for c in cols]
        for c in cols:
            _col_fetch(plan, c)
            plan.filter_cols.append(c)
        if r.op == "in":
            allowed = [tuple(k(x) for k, x in zip(keys, v, strict=False)) for v in _values(r, tt, terms)]
            plan.filters.append(
                lambda row: tuple(k(row[c]) for k, c in zip(keys, cols, strict=True)) in allowed
            )
            return
        bound = tuple(k(x) for k, x in zip(keys, terms.value(r.rhs, tt), strict=False))
        cmp = _COMPARE[r.op]
        plan.filters.append(lambda row: cmp(tuple(k(row[c]) for k, c in zip(keys, cols, strict=True)), bound))
        return
    name = lhs
    t = rt.types[name]
    _col_fetch(plan, name)
    plan.filter_cols.append(name)
    if r.op in {"contains", "contains_key"}:
        if not t.is_collection:
            raise inv(f"Cannot use CONTAINS on non-collection column {name}")
        et = t.params[0] if (r.op == "contains_key" or t.name != "map") else t.params[1]
        v = terms.value(r.rhs, et)
        if r.op == "contains_key":
            plan.filters.append(lambda row: row[name] is not None and v in row[name])
        elif t.name == "map":
            plan.filters.append(lambda row: row[name] is not None and v in list(row[name].values()))
        else:
            plan.filters.append(lambda row: row[name] is not None and v in row[name])
        return
    key = sort_key_fn(t)
    if r.op == "in":
        vals = in_vals if in_vals is not None else _values(r, t, terms)
        allowed = {repr(key(v)) for v in vals if v is not None}
        plan.filters.append(lambda row: row[name] is not None and repr(key(row[name])) in allowed)
        return
    v = terms.value(r.rhs, t)
    if v is None:
        raise inv(f"Invalid null value in condition for column {name}")
    kv = key(v)
    cmp = _COMPARE[r.op]
    plan.filters.append(lambda row: row[name] is not None and cmp(key(row[name]), kv))


# ------------------------------------------------------------------------------------ selectors
_AGG = ("count", "min", "max", "sum", "avg")


_STAR: dict[int, tuple[TableRt, list[tuple[int, Any, Any]], list[str], list[ColumnSpec],
                       list[tuple[str, Any]], bool]] = {}  # fmt: skip


def _plan_selectors(plan: Plan, rt: TableRt, st: A.Select) -> None:
    ks, tb = rt.keyspace, rt.name
    if st.selectors is None and not plan.distinct and not plan.fetch:
        # SELECT * without filters: the same for every query of this table (version)
        hit = _STAR.get(id(rt))
        if hit is None or hit[0] is not rt:
            if len(_STAR) > 1024:
                _STAR.clear()
            _plan_star(plan, rt)
            _STAR[id(rt)] = (rt, plan.fetch, plan.fetch_names, plan.columns, plan.selectors, plan.simple)
        _, fetch, names, columns, selectors, simple = _STAR[id(rt)]
        plan.fetch, plan.fetch_names, plan.columns = list(fetch), list(names), list(columns)
        plan.selectors, plan.simple = list(selectors), simple
        return
    if st.selectors is None:
        _plan_star(plan, rt)
        return
    plan.simple = False
    for s in st.selectors:
        name, spec_t, fn = _selector(plan, rt, s)
        plan.columns.append(ColumnSpec(ks, tb, s.alias or name, spec_t.cass))
        plan.selectors.append(fn)
    if plan.distinct:
        for s in st.selectors:
            if s.kind == "col" and rt.cols[s.name].kind not in ("partition_key", "static"):
                raise inv(
                    f"SELECT DISTINCT queries must only request partition key columns and/or static columns "
                    f"(not {s.name})"
                )
    aggs = [f for f in plan.selectors if f[0] == "agg"]
    plan.aggregate = bool(aggs)


def _plan_star(plan: Plan, rt: TableRt) -> None:
    ks, tb = rt.keyspace, rt.name
    if plan.distinct:
        raise inv(
            "SELECT DISTINCT queries must only request partition key columns and/or static columns (not *)"
            if rt.ck_names or rt.regulars
            else ""
        )
    for n in rt.star:
        idx = _col_fetch(plan, n)
        plan.selectors.append(("v", idx))
        plan.columns.append(ColumnSpec(ks, tb, n, rt.types[n].cass))
    plan.simple = plan.fetch_names == rt.star


def _selector(plan: Plan, rt: TableRt, s: A.Selector) -> tuple[str, CType, tuple[str, Any]]:
    if s.kind == "col":
        idx = _col_fetch(plan, s.name)
        return s.name, rt.types[s.name], ("v", idx)
    if s.kind == "count_star":
        return "count", T_BIGINT, ("agg", ("count", None, None))
    if s.kind in ("writetime", "ttl"):
        col = rt.column(s.name)
        t = rt.types[s.name]
        if col.kind in ("partition_key", "clustering"):
            raise inv(
                f"Cannot use selection function {'writeTime' if s.kind == 'writetime' else 'ttl'} on "
                f"PRIMARY KEY part {s.name}"
            )
        if t.multicell:
            raise inv(
                f"Cannot use selection function {'writeTime' if s.kind == 'writetime' else 'ttl'} on "
                f"non-frozen {'collection' if t.is_collection else 'UDT'} {s.name}"
            )
        code = (6 if s.kind == "writetime" else 7) + (2 if col.kind == "static" else 0)
        idx = _fetch_index(plan, code, s.name, None, f"{s.kind}({s.name})")
        return f"{s.kind}({s.name})", T_BIGINT if s.kind == "writetime" else T_INT, ("v", idx)
    if s.kind == "token":
        names = [a.name for a in s.args if isinstance(a, A.Selector)]
        if names != rt.pk_names:
            raise inv("Invalid number or order of arguments for token()")
        idx = _fetch_index(plan, 10, None, None, "token")
        return f"system.token({', '.join(names)})", T_BIGINT, ("v", idx)
    fname = s.name
    if fname in _AGG:
        if len(s.args) != 1 or not isinstance(s.args[0], A.Selector) or s.args[0].kind != "col":
            raise inv(f"Unsupported by the Scylla emulator: {fname}() on expressions")
        cname = s.args[0].name
        idx = _col_fetch(plan, cname)
        t = rt.types[cname]
        rt_t = T_BIGINT if fname == "count" else t
        return f"system.{fname}({cname})", rt_t, ("agg", (fname, idx, t))
    if fname in FUNCTIONS:
        _argt, res = FUNCTIONS[fname]
        if len(s.args) != 1 or not isinstance(s.args[0], A.Selector):
            raise inv(f"Unsupported by the Scylla emulator: {fname}() with these arguments in a selector")
        inner_name, _inner_t, inner = _selector(plan, rt, s.args[0])
        if inner[0] != "v":
            raise inv(f"Unsupported by the Scylla emulator: {fname}() over an aggregate")
        i = inner[1]
        if fname in ("totimestamp", "dateof"):
            from tests.scylla_emulator.cqltypes_util import ms_to_datetime

            return (
                f"system.{fname}({inner_name})",
                res,
                ("f", lambda v: None if v[i] is None else ms_to_datetime(_ts_arg(v[i]))),
            )
        if fname in ("tounixtimestamp", "unixtimestampof"):
            return (
                f"system.{fname}({inner_name})",
                res,
                ("f", lambda v: None if v[i] is None else _ts_arg(v[i])),
            )
        if fname == "todate":
            return (
                f"system.{fname}({inner_name})",
                res,
                ("f", lambda v: None if v[i] is None else CU.Date(_ts_arg(v[i]) // 86_400_000)),
            )
    raise inv(f"Unsupported by the Scylla emulator: function {fname}() in a selector")


# ------------------------------------------------------------------------------------ execution
def _encode_state(rt: TableRt, part: Partition, row: Row | None, total: int, in_part: int) -> bytes:
    ck = None
    if row is not None and row.ck is not None:
        ck = [rt.types[c].cass.serialize(v, 4) for c, v in zip(rt.ck_names, row.ck, strict=True)]
    return msgspec.msgpack.encode([part.token, part.pkbytes, ck, total, in_part])


def _decode_state(rt: TableRt, state: bytes) -> tuple[int, bytes, Any, int, int]:
    try:
        token, pkb, ck, total, in_part = msgspec.msgpack.decode(state)
        if ck is not None:
            vals = tuple(
                normalize(rt.types[c].cass.deserialize(b, 4), rt.types[c])
                for c, b in zip(rt.ck_names, ck, strict=True)
            )
            ck = rt.ck_key(vals)
        return int(token), bytes(pkb), ck, int(total), int(in_part)
    except (msgspec.DecodeError, ValueError, TypeError) as e:
        raise CqlError(ErrorCode.PROTOCOL_ERROR, f"Invalid paging state: {e}") from e


def _partitions(plan: Plan, resume: tuple[int, bytes] | None) -> Iterator[Partition]:
    store = plan.rt.store
    if plan.keys is not None:
        for tok, pkb, _ in plan.keys:
            if resume is not None and (tok, pkb) < resume:
                continue
            p = store.partitions.get(pkb)
            if p is not None:
                yield p
        return
    if resume is not None:
        start_tok, start_pkb, incl = resume[0], resume[1], True
        if plan.token_lo is not None and (plan.token_lo, b"") > resume:
            start_tok, start_pkb, incl = plan.token_lo, b"", True
    elif plan.token_lo is not None:
        start_tok, start_pkb, incl = plan.token_lo, b"", True
    else:
        start_tok, start_pkb, incl = None, b"", True  # type: ignore[assignment]
    for p in store.iter_from(start_tok, start_pkb, incl, plan.token_hi, plan.token_hi_incl):
        if plan.token_lo is not None and not plan.token_lo_incl and p.token == plan.token_lo:
            continue
        yield p


def _static_values(plan: Plan, part: Partition, now: int) -> tuple[dict[str, Any], bool]:
    st = part.static
    out: dict[str, Any] = {}
    live = False
    if st is None:
        return out, False
    dts = part.tomb if part.tomb > st.tomb else st.tomb
    rt = plan.rt
    for name in rt.statics:
        c = st.cells.get(name)
        if c is None:
            continue
        if type(c) is AtomicCell:
            if c.live and c.ts > dts and (c.expiry is None or c.expiry > now):
                out[name] = c.value
                out["\x00wt" + name] = c.ts
                out["\x00ttl" + name] = c.expiry
                live = True
        else:
            cells = live_cells(c, dts, now)
            if cells:
                live = True
                out[name] = multicell_value(rt.types[name], cells)
    return out, live


def run_select(plan: Plan, now: int, page_size: int | None, paging_state: bytes | None) -> RowsResult:
    rt = plan.rt
    if plan.empty:
        return RowsResult(plan.columns, [])
    total = 0
    resume_in_part = 0
    resume: tuple[int, bytes] | None = None
    after: Any = None
    skip_partition = False
    if paging_state:
        tok, pkb, after, total, resume_in_part = _decode_state(rt, paging_state)
        resume = (tok, pkb)
        skip_partition = after is None
    limit = plan.limit
    if plan.aggregate or plan.order_by_in:
        page_size = None
    fetch = plan.fetch
    fast = _compile_fetch(fetch)
    filters = plan.filters
    names = plan.fetch_names
    ppl = plan.ppl
    simple = plan.simple
    out_rows: list[list[Any]] = []
    last: tuple[Partition, Row | None, int] | None = None
    more = False
    produced = total
    scan = None
    if (
        USE_SCAN
        and fast is not None
        and not filters
        and limit is None
        and ppl is None
        and simple
        and not plan.distinct
    ):
        regular = {key for code, key, _ in fetch if code == 2}
        all_cells = regular == set(rt.regulars) and not any(rt.types[c].multicell for c in rt.regulars)
        scan = _compile_scan(fetch, all_cells)
    cap = page_size if page_size is not None else 1 << 62
    for part in _partitions(plan, resume):
        first_resumed = resume is not None and part.pkbytes == resume[1] and part.token == resume[0]
        if first_resumed and skip_partition:
            continue
        in_part = resume_in_part if first_resumed else 0
        if ppl is not None and in_part >= ppl:
            continue
        svals, slive = _static_values(plan, part, now) if part.static is not None else ({}, False)
        if plan.distinct:
            live = slive or any(
                row_is_live(part.rows[k], part.deletion_for(k, part.rows[k]), now) for k in part.keys
            )
            candidates: Iterator[tuple[Row | None, int]] = iter([(None, NO_TS)] if live else [])
        elif scan is not None and not part.rts:
            runs = _key_runs(plan, part, after if first_resumed else None)
            lastrow, count, full = scan(part, runs, svals, now, out_rows, cap)
            if count:
                produced += count
                in_part += count
                last = (part, lastrow, in_part)
            if full:
                more = True
                break
            if count or plan.ck_restricted or not slive or (first_resumed and after is not None):
                continue
            candidates = iter(())  # only static data: handled below like the generic loop does
        else:
            candidates = _iter_rows(plan, part, after if first_resumed else None, now)
        rows_seen = False
        stop = False
        for row, dts in candidates:
            rows_seen = True
            if limit is not None and produced >= limit:
                stop = True
                break
            if page_size is not None and len(out_rows) >= page_size:
                more = stop = True
                break
            vals = (
                fast(part, row, dts, svals, now)
                if fast is not None
                else _values_of(fetch, part, row, dts, svals, now)
            )
            if filters:
                d = dict(zip(names, vals, strict=True))
                if not all(f(d) for f in filters):
                    continue
            out_rows.append(vals if simple else _project(plan, vals))
            produced += 1
            in_part += 1
            last = (part, row, in_part)
            if ppl is not None and in_part >= ppl:
                break
        if stop:
            break
        if (
            rows_seen
            or plan.distinct
            or not slive
            or plan.ck_restricted
            or (first_resumed and after is not None)
        ):
            continue
        # a partition with only static data: one row, clustering/regular columns null
        if limit is not None and produced >= limit:
            break
        if page_size is not None and len(out_rows) >= page_size:
            more = True
            break
        vals = _values_of(fetch, part, None, NO_TS, svals, now)
        if not filters or all(f(dict(zip(names, vals, strict=True))) for f in filters):
            out_rows.append(vals if simple else _project(plan, vals))
            produced += 1
            last = (part, None, 1)
    if plan.order_by_in:
        pos = [plan.fetch_names.index(n) if n in plan.fetch_names else -1 for n in rt.ck_names]
        if all(p >= 0 for p in pos) and not simple:
            raise inv(
                "Unsupported by the Scylla emulator: ORDER BY with IN without selecting the clustering columns"
            )
        key = rt.ck_key
        out_rows.sort(key=lambda r: key(tuple(r[p] for p in pos)), reverse=plan.reverse)
    if plan.aggregate:
        return RowsResult(plan.columns, [_aggregate(plan, out_rows)])
    state = None
    if more and last is not None:
        state = _encode_state(rt, last[0], last[1], produced, last[2])
    return RowsResult(plan.columns, out_rows, state)


def _key_runs(plan: Plan, part: Partition, after: Any) -> list[tuple[int, int, bool]]:
    """The row index spans ``[a, b)`` of ``part.keys``/``part.rowlist`` to visit, in output order
    (``True``: walk the span backwards)."""
    keys = part.keys
    if plan.ranges is None:
        spans = [(0, len(keys))]
    else:
        spans = [part.slice(lo, li, hi, hi_i) for lo, li, hi, hi_i in plan.ranges]
    runs = []
    if plan.reverse:
        for a, b0 in reversed(spans):
            b = b0 if after is None else min(b0, bisect.bisect_left(keys, after, a, b0))
            if a < b:
                runs.append((a, b, True))
    else:
        for a0, b in spans:
            a = a0 if after is None else max(a0, bisect.bisect_right(keys, after, a0, b))
            if a < b:
                runs.append((a, b, False))
    return runs


def _iter_rows(plan: Plan, part: Partition, after: Any, now: int) -> Iterator[tuple[Row, int]]:
    ptomb = part.tomb
    rts = part.rts
    keys = part.keys
    rowlist = part.rowlist
    for a, b, backwards in _key_runs(plan, part, after):
        for i in range(b - 1, a - 1, -1) if backwards else range(a, b):
            row = rowlist[i]
            if rts:
                dts = part.deletion_for(keys[i], row)
            else:
                dts = row.tomb if row.tomb > ptomb else ptomb
            m = row.marker
            if m is not None and m.live and m.ts > dts and (m.expiry is None or m.expiry > now):
                yield row, dts
                continue
            for c in row.cells.values():
                if type(c) is AtomicCell:
                    if c.live and c.ts > dts and (c.expiry is None or c.expiry > now):
                        yield row, dts
                        break
                elif live_cells(c, dts, now):
                    yield row, dts
                    break


_COMPILED: dict[tuple[tuple[int, Any], ...], Callable[..., list[Any]]] = {}


def _compile_fetch(fetch: list[tuple[int, Any, Any]]) -> Callable[..., list[Any]] | None:
    """A generated extractor for plans made only of key, atomic and static columns (the hot path of
    CDC log reads); None when the generic ``_values_of`` is needed. Cached per (code, key) list."""
    if any(code not in (0, 1, 2, 4, 5) for code, _, _ in fetch):
        return None
    spec = tuple((code, key) for code, key, _ in fetch)
    fn = _COMPILED.get(spec)
    if fn is None:
        if len(_COMPILED) > 1024:
            _COMPILED.clear()
        fn = _COMPILED[spec] = _generate_fetch(fetch)
    return fn


def _extract_lines(
    fetch: list[tuple[int, Any, Any]], indent: str, track_live: bool = False
) -> tuple[list[str], str]:
    """Source lines computing the fetched values of ``row`` (cells getter ``g``, clustering ``ck``,
    partition key ``pk``, ``dts``, ``svals``, ``now`` in scope) and the list display of them.
    ``track_live``: also set ``live = True`` when a fetched cell is live."""
    lines = []
    out = []
    for i, (code, key, _) in enumerate(fetch):
        if code == 0:
            out.append(f"pk[{key}]")
        elif code == 1:
            out.append(f"(ck[{key}] if ck else None)")
        elif code == 2:
            lines.append(f"{indent}c = g({key!r})")
            lines.append(f"{indent}if c is None or not c.live or c.ts <= dts:")
            lines.append(f"{indent}    v{i} = None")
            lines.append(f"{indent}else:")
            lines.append(f"{indent}    e = c.expiry")
            if track_live:
                lines.append(f"{indent}    if e is None or e > now:")
                lines.append(f"{indent}        v{i} = c.value")
                lines.append(f"{indent}        live = True")
                lines.append(f"{indent}    else:")
                lines.append(f"{indent}        v{i} = None")
            else:
                lines.append(f"{indent}    v{i} = c.value if e is None or e > now else None")
            out.append(f"v{i}")
        else:
            out.append(f"svals.get({key!r})")
    return lines, f"[{', '.join(out)}]"


def _generate_fetch(fetch: list[tuple[int, Any, Any]]) -> Callable[..., list[Any]]:
    lines = ["def f(part, row, dts, svals, now):", "    pk = part.pk"]
    lines.append(
        "    if row is None:\n        g = {}.get\n        ck = None\n    else:\n        g = row.cells.get\n"
        "        ck = row.ck"
    )
    body, display = _extract_lines(fetch, "    ")
    lines += body
    lines.append(f"    return {display}")
    ns: dict[str, Any] = {}
    exec("\n".join(lines), ns)
    fn: Callable[..., list[Any]] = ns["f"]
    return fn


USE_SCAN = True  # False: always the generic row loop (equivalence tests)
_SCANS: dict[tuple[Any, ...], Callable[..., tuple[Row | None, int, bool]]] = {}


def _compile_scan(
    fetch: list[tuple[int, Any, Any]], all_cells: bool
) -> Callable[..., tuple[Row | None, int, bool]]:
    """``scan(part, runs, svals, now, out, cap) -> (last row, rows added, page full)``: the live rows
    of ``runs`` (``_key_runs``) of a partition without range tombstones, extracted like the
    ``_compile_fetch`` function and appended to ``out`` until it holds ``cap`` rows; "page full"
    means one more live row was found (the ``_iter_rows`` + extractor loop of ``run_select``, fused).
    ``all_cells``: the fetch reads every (atomic) regular column of the table, so a row without a
    live marker is live exactly when one of the fetched cells is (no separate liveness pass)."""
    spec = (tuple((code, key) for code, key, _ in fetch), all_cells)
    fn = _SCANS.get(spec)
    if fn is not None:
        return fn
    head = [
        "def scan(part, runs, svals, now, out, cap):",
        "    ptomb = part.tomb",
        "    rowlist = part.rowlist",
        "    pk = part.pk",
        "    last = None",
        "    n = 0",
        "    append = out.append",
        "    room = cap - len(out)",
        "    for a, b, backwards in runs:",
        "        for i in (range(b - 1, a - 1, -1) if backwards else range(a, b)):",
        "            row = rowlist[i]",
        "            dts = row.tomb if row.tomb > ptomb else ptomb",
        "            m = row.marker",
    ]
    tail = [
        "            n += 1",
        "            last = row",
        "    return last, n, False",
    ]
    if all_cells:
        body, display = _extract_lines(fetch, "            ", track_live=True)
        lines = [
            *head,
            "            live = m is not None and m.live and m.ts > dts and (m.expiry is None or m.expiry > now)",
            "            g = row.cells.get",
            "            ck = row.ck",
            *body,
            "            if not live:",
            "                continue",
            "            if n >= room:",
            "                return last, n, True",
            f"            append({display})",
            *tail,
        ]
    else:
        body, display = _extract_lines(fetch, "            ")
        lines = [
            *head,
            "            if not (m is not None and m.live and m.ts > dts and (m.expiry is None or m.expiry > now)):",
            "                for c in row.cells.values():",
            "                    if type(c) is AC:",
            "                        if c.live and c.ts > dts and (c.expiry is None or c.expiry > now):",
            "                            break",
            "                    elif live_cells(c, dts, now):",
            "                        break",
            "                else:",
            "                    continue",
            "            if n >= room:",
            "                return last, n, True",
            "            g = row.cells.get",
            "            ck = row.ck",
            *body,
            f"            append({display})",
            *tail,
        ]
    ns: dict[str, Any] = {"AC": AtomicCell, "live_cells": live_cells}
    exec("\n".join(lines), ns)
    fn = ns["scan"]
    if len(_SCANS) > 1024:
        _SCANS.clear()
    _SCANS[spec] = fn
    return fn


def _values_of(  # noqa: PLR0917
    fetch: list[tuple[int, Any, Any]],
    part: Partition,
    row: Row | None,
    dts: int,
    svals: dict[str, Any],
    now: int,
) -> list[Any]:
    out: list[Any] = []
    app = out.append
    cells = row.cells if row is not None else {}
    for code, key, t in fetch:
        if code == 2:
            c = cells.get(key)
            if c is None or not c.live or c.ts <= dts or (c.expiry is not None and c.expiry <= now):
                app(None)
            else:
                app(c.value)
        elif code == 0:
            app(part.pk[key])
        elif code == 1:
            app(row.ck[key] if row is not None and row.ck is not None else None)
        elif code == 3:
            c = cells.get(key)
            app(multicell_value(t, live_cells(c, dts, now)) if isinstance(c, CollCells) else None)
        elif code in (4, 5):
            app(svals.get(key))
        elif code in (6, 7):
            c = cells.get(key)
            if c is None or not c.live or c.ts <= dts or (c.expiry is not None and c.expiry <= now):
                app(None)
            elif code == 6:
                app(c.ts)
            else:
                app(None if c.expiry is None else math.ceil((c.expiry - now) / 1_000_000))
        elif code == 8:
            app(svals.get("\x00wt" + key))
        elif code == 9:
            e = svals.get("\x00ttl" + key)
            app(None if e is None else math.ceil((e - now) / 1_000_000))
        elif code == 10:
            app(part.token)
    return out


def _project(plan: Plan, vals: list[Any]) -> list[Any]:
    out = []
    for kind, x in plan.selectors:
        if kind == "v":
            out.append(vals[x])
        elif kind == "f":
            out.append(x(vals))
        else:
            out.append(vals)  # aggregate input: the whole fetched row
    return out


def _aggregate(plan: Plan, rows: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for i, (kind, x) in enumerate(plan.selectors):
        if kind != "agg":
            out.append(rows[0][i] if rows else None)
            continue
        fname, idx, t = x
        if fname == "count":
            out.append(len(rows) if idx is None else sum(1 for r in rows if r[i][idx] is not None))
            continue
        vals = [r[i][idx] for r in rows if r[i][idx] is not None]
        if fname in ("min", "max"):
            if not vals:
                out.append(None)
            else:
                k = sort_key_fn(t)
                out.append(min(vals, key=k) if fname == "min" else max(vals, key=k))
        elif fname == "sum":
            out.append(sum(vals) if vals else 0)
        else:
            out.append(
                sum(vals) / len(vals)
                if vals and t.name in ("float", "double", "decimal")
                else (sum(vals) // len(vals) if vals else 0)
            )
    return out
