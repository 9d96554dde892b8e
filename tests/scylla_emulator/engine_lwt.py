"""Lightweight transactions: evaluate ``IF NOT EXISTS`` / ``IF EXISTS`` / ``IF col op v`` conditions.

Result shape (Scylla, ``cql3/statements/modification_statement.cc::build_cas_result_set_metadata``
and ``cas_request.cc::build_cas_result_set``), applied or not: ``[applied]`` plus every column of the
table (partition key, clustering key, static, regular columns) when a statement has IF EXISTS / IF
NOT EXISTS, else the columns named in the conditions (schema order); one row per conditional
statement with the row's values before the write, all null when it did not exist. Only applied
LWTs reach storage/CDC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.scylla_emulator.api import ColumnSpec, CqlError, ErrorCode, RowsResult
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


def _schema_order(rt: Any) -> list[str]:
    """schema::all_columns(): partition key, clustering key, static, regular (each by name)."""
    return [*rt.pk_names, *rt.ck_names, *sorted(rt.statics), *sorted(rt.regulars)]


def check_conditions(
    eng: EmulatorEngine, items: list[tuple[Any, Terms]], specs: list[WriteSpec]
) -> tuple[bool, RowsResult]:
    """(whether every condition holds, the LWT result to answer). The caller applies the writes
    when they hold; the result is computed first, so it shows the rows as they were."""
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
    wanted: set[str] = set()
    olds: list[dict[str, Any] | None] = []
    rt0: Any = specs[0].rt
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
        olds.append(cur)
        if getattr(st, "if_not_exists", False):
            wanted.update(rt.cols)
            if cur is not None:
                applied = False
            continue
        if getattr(st, "if_exists", False):
            wanted.update(rt.cols)
            if cur is None:
                applied = False
            continue
        for cond in st.conditions:
            col = rt.column(cond.column)
            if col.kind in ("partition_key", "clustering"):
                raise inv(f"PRIMARY KEY column '{cond.column}' cannot have IF conditions")
            wanted.add(cond.column)
            t = rt.types[cond.column]
            actual = _value(rt, cond.column, cur)
            et = t
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
            elif cond.field is not None:
                if t.name != "udt" or cond.field not in t.field_names:
                    raise inv(f"Invalid field access {cond.column}.{cond.field}")
                i = t.field_names.index(cond.field)
                actual = None if actual is None else actual[i]
                et = t.params[i]
            if cond.op == "in":
                if isinstance(cond.value, A.Bind):
                    expected = terms.value(cond.value, CType("list", (et,), True)) or []
                else:
                    expected = [terms.value(x, et) for x in cond.value]
            else:
                expected = terms.value(cond.value, et)
            if not _compare(cond.op, actual, expected, et):
                applied = False
    names = [n for n in _schema_order(rt0) if n in wanted]
    cols = [ColumnSpec(rt0.keyspace, rt0.name, "[applied]", T_BOOL.cass)]
    cols += [ColumnSpec(rt0.keyspace, rt0.name, n, rt0.types[n].cass) for n in names]
    rows = [[applied, *(_value(rt0, n, cur) if cur is not None else None for n in names)] for cur in olds]
    return applied, RowsResult(cols, rows)


def _static_only(rt: Any, st: Any) -> bool:
    if isinstance(st, A.Update):
        return all(rt.cols[a.column].kind == "static" for a in st.assignments)
    if isinstance(st, A.Delete):
        return bool(st.targets) and all(rt.cols[t.column].kind == "static" for t in st.targets)
    return False
