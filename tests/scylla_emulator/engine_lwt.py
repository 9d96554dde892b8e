"""Lightweight transactions: evaluate ``IF NOT EXISTS`` / ``IF EXISTS`` / ``IF col op v`` conditions.

Result shape (Cassandra): applied -> one row ``[applied] = True``; not applied -> ``[applied] = False``
plus, for IF NOT EXISTS, every column of the existing row (SELECT * order), for IF conditions the
condition columns (current values), for IF EXISTS nothing. Only applied LWTs reach storage/CDC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.scylla_emulator.api import ColumnSpec, CqlError, ErrorCode, Result, RowsResult
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cqltypes_util import CType, sort_key_fn
from tests.scylla_emulator.engine_bind import Terms
from tests.scylla_emulator.engine_select import multicell_value
from tests.scylla_emulator.engine_write import WriteSpec

if TYPE_CHECKING:
    from tests.scylla_emulator.engine import EmulatorEngine

__all__ = ["check_conditions"]

T_BOOL = CType("boolean")


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


def _value(rt: Any, name: str, cur: dict[str, Any] | None) -> Any:
    if cur is None:
        return None
    v = cur.get(name)
    t = rt.types[name]
    if t.multicell and isinstance(v, list):
        return multicell_value(t, list(v))
    return v


def _compare(op: str, actual: Any, expected: Any, t: CType) -> bool:
    if op == "in":
        return any(_compare("=", actual, e, t) for e in expected)
    if op == "=":
        if actual is None or expected is None:
            return actual is None and expected is None
        k = sort_key_fn(t)
        return bool(k(actual) == k(expected))
    if op == "!=":
        return not _compare("=", actual, expected, t)
    if actual is None or expected is None:
        if expected is None:
            raise inv('Invalid comparison with null for operator "' + op + '"')
        return False
    k = sort_key_fn(t)
    a, b = k(actual), k(expected)
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def check_conditions(
    eng: EmulatorEngine, items: list[tuple[Any, Terms]], specs: list[WriteSpec]
) -> Result | None:
    """None when every condition holds (the caller applies the writes), else the not-applied result."""
    pk_bytes = set()
    for _item, spec in zip(items, specs, strict=True):
        if spec.pk is None:
            raise inv("IN on the partition key is not supported with conditional updates")
        pk_bytes.add((spec.rt.keyspace, spec.rt.name, spec.rt.pk_bytes(spec.pk)))
    if len(pk_bytes) > 1:
        raise inv(
            "Batch with conditions cannot span multiple tables"
            if len({(a, b) for a, b, _ in pk_bytes}) > 1
            else "Batch with conditions cannot span multiple partitions"
        )
    cols: list[ColumnSpec] = []
    row_vals: list[Any] = []
    applied = True
    for (st, terms), spec in zip(items, specs, strict=True):
        rt = spec.rt
        if not (getattr(st, "if_not_exists", False) or getattr(st, "if_exists", False) or st.conditions):
            continue
        if (
            rt.ck_names
            and spec.ck is None
            and isinstance(st, A.Insert | A.Update | A.Delete)
            and not _static_only(rt, st)
        ):
            raise inv(
                "IN on the clustering key columns is not supported with conditional "
                + ("deletions" if isinstance(st, A.Delete) else "updates")
            )
        ck = spec.ck if rt.ck_names else ()
        if rt.ck_names and spec.ck is None:
            ck = None
        cur = eng._current(rt, spec.pk, ck)  # type: ignore[arg-type]
        if isinstance(st, A.Delete) and not rt.ck_names and cur is None:
            cur = None
        if getattr(st, "if_not_exists", False):
            if cur is not None:
                applied = False
                for n in rt.star:
                    if not any(c.name == n for c in cols):
                        cols.append(ColumnSpec(rt.keyspace, rt.name, n, rt.types[n].cass))
                        row_vals.append(_value(rt, n, cur))
            continue
        if getattr(st, "if_exists", False):
            if cur is None:
                applied = False
            continue
        for cond in st.conditions:
            col = rt.column(cond.column)
            if col.kind in ("partition_key", "clustering"):
                raise inv(f"PRIMARY KEY column '{cond.column}' cannot have IF conditions")
            t = rt.types[cond.column]
            actual = _value(rt, cond.column, cur)
            et = t
            label = cond.column
            if cond.element is not None:
                if not t.is_collection or t.name == "set":
                    raise inv(f"Invalid element access syntax for non-list/map column {cond.column}")
                if t.name == "map":
                    key = terms.value(cond.element, t.params[0])
                    actual = None if actual is None else actual.get(key)
                else:
                    idx = terms.value(cond.element, CType("int"))
                    actual = None if actual is None or idx is None or idx >= len(actual) else actual[idx]
                et = t.params[-1]
                label = f"{cond.column}[{key if t.name == 'map' else idx}]"
            elif cond.field is not None:
                if t.name != "udt" or cond.field not in t.field_names:
                    raise inv(f"Invalid field access {cond.column}.{cond.field}")
                i = t.field_names.index(cond.field)
                actual = None if actual is None else actual[i]
                et = t.params[i]
                label = f"{cond.column}.{cond.field}"
            if cond.op == "in":
                if isinstance(cond.value, A.Bind):
                    expected = terms.value(cond.value, CType("list", (et,), True)) or []
                else:
                    expected = [terms.value(x, et) for x in cond.value]
            else:
                expected = terms.value(cond.value, et)
            if not _compare(cond.op, actual, expected, et):
                applied = False
            if not any(c.name == cond.column for c in cols) and cond.element is None and cond.field is None:
                cols.append(ColumnSpec(rt.keyspace, rt.name, cond.column, t.cass))
                row_vals.append(_value(rt, cond.column, cur))
            elif cond.element is not None or cond.field is not None:  # noqa: SIM102
                if not any(c.name == label for c in cols):
                    cols.append(ColumnSpec(rt.keyspace, rt.name, label, et.cass))
                    row_vals.append(actual)
    if applied:
        return None
    st0 = items[0][0]
    rt0 = specs[0].rt
    head = ColumnSpec(rt0.keyspace, rt0.name, "[applied]", T_BOOL.cass)
    if getattr(st0, "if_exists", False) and not cols:
        return RowsResult([head], [[False]])
    return RowsResult([head, *cols], [[False, *row_vals]])


def _static_only(rt: Any, st: Any) -> bool:
    if isinstance(st, A.Update):
        return all(rt.cols[a.column].kind == "static" for a in st.assignments)
    if isinstance(st, A.Delete):
        return bool(st.targets) and all(rt.cols[t.column].kind == "static" for t in st.targets)
    return False
