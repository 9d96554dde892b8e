"""Fold a batch of change events into per-row plans (pure; no I/O).

PostgreSQL's ``INSERT .. ON CONFLICT`` may touch a row once per statement, so the events of a
batch are folded per primary key, in order, into one ``RowPlan`` each: an upsert of the columns the
events carried (``replace`` when a delete came first: the row starts empty, as in Scylla) or a
delete. Partition and range deletes touch rows the batch may not name, so they cut the batch into
``Segment``s that are applied one after the other inside the same transaction.

Non-frozen collection/UDT changes are kept as operations (clear, add, remove) and resolved against
the current value read back from PostgreSQL (``resolve``), in PostgreSQL value space
(``pg_types.to_pg``), which makes them exact and idempotent: replaying an already applied delta
re-adds the same cells (list cells are keyed by their timeuuid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcd.events import ChangeEvent, Op, timeuuid_sort_key
from cdcd.schema import Column, CqlType
from cdcd.sinks.pg_sql import TargetLayout
from cdcd.sinks.pg_types import (
    JSON_ENCODER,
    LIST_KEYS_PREFIX,
    Converter,
    is_array,
    json_key,
    json_value,
    set_sort_key,
    to_pg,
)

__all__ = ["Collection", "RowPlan", "Segment", "TableCodec", "fold"]


@dataclass
class Collection:
    """Pending change of one non-frozen collection/UDT column: applied on the current value
    (or on nothing when ``cleared``)."""

    cleared: bool
    ops: list[tuple[str, Any]] = field(default_factory=list)  # ("add", pg cells) / ("rm", pg keys)


@dataclass
class RowPlan:
    layout: TargetLayout
    key: tuple[Any, ...]  # PostgreSQL values of layout.key
    write_time: int
    delete: bool = False
    replace: bool = False  # the row was deleted earlier in this batch: unset columns are NULL
    marker: bool = False  # an INSERT wrote the row marker
    nulled: bool = False  # some column was nulled/emptied: the row may have vanished (no marker)
    sets: dict[str, Any] = field(default_factory=dict)  # physical column -> PostgreSQL value
    colls: dict[str, Collection] = field(default_factory=dict)
    events: list[int] = field(default_factory=list)  # batch indices folded into this plan


@dataclass
class Segment:
    """Row plans to apply, then (optionally) one partition/range delete event."""

    plans: dict[tuple[bool, tuple[Any, ...]], RowPlan] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)  # row/partition/range delete events (history)
    breaker: int | None = None  # index of a partition/range delete applied after the plans


class TableCodec:
    """Per-table converters from canonical event values to PostgreSQL values."""

    def __init__(self, columns: Sequence[Column], main: TargetLayout, static: TargetLayout | None) -> None:
        self.main = main
        self.static = static
        self.types: dict[str, CqlType] = {c.name: c.type for c in columns}
        self.conv: dict[str, Converter] = {c.name: to_pg(c.type) for c in columns}
        self.elem: dict[str, Converter] = {}
        for c in columns:
            t = c.type
            if t.is_multicell and t.name in ("list", "set"):
                self.elem[c.name] = to_pg(t.params[0]) if is_array(t) else json_value
            elif t.is_multicell and t.name == "map":
                self.elem[c.name] = json_value

    def key_of(self, layout: TargetLayout, key: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(self.conv[c.name](key[c.name]) for c in layout.key)

    # -- collection deltas in PostgreSQL value space -------------------------------------------
    def added(self, col: str, value: Any) -> Any:
        t = self.types[col]
        elem = self.elem.get(col)
        if t.name == "list":
            assert elem is not None
            return [(k, elem(v)) for k, v in value.items()]
        if t.name == "set":
            assert elem is not None
            return [elem(v) for v in value]
        if t.name == "map":
            return {json_key(k): json_value(v) for k, v in value.items()}
        return {f: json_value(v) for f, v in value.items()}  # UDT fields

    def removed(self, col: str, keys: Sequence[Any]) -> list[Any]:
        t = self.types[col]
        if t.name == "set":
            elem = self.elem[col]
            return [elem(k) for k in keys]
        if t.name == "map":
            return [json_key(k) for k in keys]
        return list(keys)  # list timeuuids, UDT field names


def _identity(v: Any) -> Any:
    """Identity of a set element in PostgreSQL space (jsonb elements compare by JSON text)."""
    if isinstance(v, dict | list):
        return JSON_ENCODER.encode(v)
    return v


def resolve(codec: TableCodec, plan: RowPlan, current: Mapping[str, Any] | None) -> None:
    """Turn ``plan.colls`` into final column values in ``plan.sets`` (``current``: the row's
    present PostgreSQL values, None when it does not exist or the plan needs no read-back)."""
    for col, coll in plan.colls.items():
        t = codec.types[col]
        base = None if coll.cleared or current is None else current.get(col)
        if t.name == "list":
            base_keys = None if coll.cleared or current is None else current.get(LIST_KEYS_PREFIX + col)
            cells = dict(zip(base_keys or [], base or [], strict=False))
            for kind, arg in coll.ops:
                if kind == "add":
                    cells.update(arg)
                else:
                    for k in arg:
                        cells.pop(k, None)
            ordered = sorted(cells.items(), key=lambda kv: timeuuid_sort_key(kv[0]))
            plan.sets[col] = [v for _, v in ordered] or None
            plan.sets[LIST_KEYS_PREFIX + col] = [k for k, _ in ordered] or None
        elif t.name == "set":
            elems = {_identity(v): v for v in (base or [])}
            for kind, arg in coll.ops:
                if kind == "add":
                    elems.update((_identity(v), v) for v in arg)
                else:
                    for k in arg:
                        elems.pop(_identity(k), None)
            if is_array(t):
                plan.sets[col] = sorted(elems.values(), key=set_sort_key) or None
            else:
                plan.sets[col] = [elems[k] for k in sorted(elems)] or None
        elif t.name == "map":
            entries = dict(base or {})
            for kind, arg in coll.ops:
                if kind == "add":
                    entries.update(arg)
                else:
                    for k in arg:
                        entries.pop(k, None)
            plan.sets[col] = dict(sorted(entries.items())) or None
        else:  # non-frozen UDT
            assert t.udt is not None
            fields = dict.fromkeys(t.udt.field_names) | dict(base or {})
            for kind, arg in coll.ops:
                if kind == "add":
                    fields.update(arg)
                else:
                    for f in arg:
                        fields[f] = None
            plan.sets[col] = fields if any(v is not None for v in fields.values()) else None
    plan.colls.clear()


def _apply_upsert(codec: TableCodec, plan: RowPlan, ev: ChangeEvent, layout: TargetLayout) -> None:
    if plan.delete:  # delete then write again: the row starts empty
        plan.delete, plan.replace, plan.marker = False, True, False
        plan.sets.clear()
        plan.colls.clear()
    stored = {c.name for c in layout.values}
    for col in ev.deleted:
        if col not in stored:
            continue
        if codec.types[col].is_multicell:
            plan.colls[col] = Collection(cleared=True)
            plan.sets.pop(col, None)
        else:
            plan.sets[col] = None
        plan.nulled = True
    for col, value in ev.values.items():
        if col not in stored:
            continue
        t = codec.types[col]
        if t.is_multicell:
            coll = plan.colls.get(col) or Collection(cleared=plan.replace)
            plan.colls[col] = coll
            coll.ops.append(("add", codec.added(col, value)))
        else:
            plan.sets[col] = codec.conv[col](value)
    for col, keys in ev.deleted_elements.items():
        if col not in stored or not keys:
            continue
        coll = plan.colls.get(col) or Collection(cleared=plan.replace)
        plan.colls[col] = coll
        coll.ops.append(("rm", codec.removed(col, keys)))
        plan.nulled = True
    if ev.op == Op.INSERT and not ev.static:
        plan.marker = True
    plan.write_time = ev.write_time_us


def fold(
    codec: TableCodec, events: Sequence[ChangeEvent], unknown: Callable[[int, str], object]
) -> list[Segment]:
    """Fold ``events`` (one table, stream order) into segments. ``unknown(index, column)`` is
    called for a column the target does not have (the caller turns it into a bad row)."""
    segments = [Segment()]
    known = set(codec.types)
    for i, ev in enumerate(events):
        for col in (*ev.values, *ev.deleted, *ev.deleted_elements):
            if col not in known:
                unknown(i, col)
        seg = segments[-1]
        if ev.op in (Op.PARTITION_DELETE, Op.RANGE_DELETE):
            seg.breaker = i
            seg.deletes.append(i)
            segments.append(Segment())
            continue
        layout = codec.static if ev.static else codec.main
        if layout is None:
            unknown(i, "<static row>")
            continue
        key = codec.key_of(layout, ev.key)
        plan = seg.plans.get((ev.static, key))
        if plan is None:
            plan = RowPlan(layout=layout, key=key, write_time=ev.write_time_us)
            seg.plans[(ev.static, key)] = plan
        plan.events.append(i)
        if ev.op in (Op.INSERT, Op.UPDATE):
            _apply_upsert(codec, plan, ev, layout)
        elif ev.op == Op.ROW_DELETE:
            plan.delete, plan.replace, plan.marker, plan.nulled = True, False, False, False
            plan.sets.clear()
            plan.colls.clear()
            plan.write_time = ev.write_time_us
            seg.deletes.append(i)
        else:
            unknown(i, f"<operation {ev.op!r}>")
    return [s for s in segments if s.plans or s.breaker is not None]
