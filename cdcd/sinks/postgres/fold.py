"""Fold a batch of change events into per-row plans (pure; no I/O).

PostgreSQL's ``INSERT .. ON CONFLICT`` may touch a row once per statement, so the events of a
batch are folded per primary key, in order, into one ``RowPlan`` each: an upsert of the columns the
events carried (``replace`` when a delete came first: the row starts empty, as in Scylla) or a
delete. Partition and range deletes touch rows the batch may not name, so they cut the batch into
``Segment``s that are applied one after the other inside the same transaction.

Non-frozen collection/UDT changes are kept as operations (clear, add, remove) and resolved against
the current value read back from PostgreSQL (``resolve``), in PostgreSQL value space
(``types.to_pg``), which makes them exact and idempotent: replaying an already applied delta
re-adds the same cells (list cells are keyed by their timeuuid).

``fold`` also finds the events PostgreSQL could never store (text with U+0000, a column the target
does not know, a value with no PostgreSQL form): it returns them as ``{index: reason}`` instead of
plans, so the sink can refuse them without a round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcd.events import ChangeEvent, Op, RangeBound, timeuuid_sort_key
from cdcd.schema import Column, CqlType
from cdcd.sinks.postgres.sql import TargetLayout
from cdcd.sinks.postgres.types import (
    JSON_ENCODER,
    LIST_KEYS_PREFIX,
    Converter,
    cql_order_key,
    from_pg,
    identity,
    is_array,
    json_key,
    json_value,
    nul_check,
    row_key,
    set_sort_key,
    to_pg,
)

__all__ = ["Collection", "ColumnCodec", "RowPlan", "Segment", "TableCodec", "fold", "resolve"]

_UPSERTS = (Op.INSERT, Op.UPDATE)
_ROW_DELETES = (Op.ROW_DELETE, Op.SERVICE_ROW_DELETE)
_WIDE_DELETES = (Op.PARTITION_DELETE, Op.SERVICE_PARTITION_DELETE, Op.RANGE_DELETE)
_PLAIN, _TEXT, _NESTED, _MULTICELL = range(4)  # how fold handles a value (TableCodec.fast)
NUL_REASON = "text contains NUL (U+0000), which PostgreSQL cannot store"


@dataclass
class Collection:
    """Pending change of one non-frozen collection/UDT column: applied on the current value
    (or on nothing when ``cleared``)."""

    cleared: bool
    ops: list[tuple[str, Any]] = field(default_factory=list)  # ("add", pg cells) / ("rm", pg keys)


class RowPlan:
    """The folded effect of a batch's events on one row (a plain slotted class: one is built per
    distinct row of every batch)."""

    __slots__ = ("colls", "delete", "events", "indices", "keep", "key", "layout", "marker", "nulled", "replace",
                 "seq", "sets", "write_time")  # fmt: skip

    def __init__(self, layout: TargetLayout, key: tuple[Any, ...], write_time: int, seq: int = 0) -> None:
        self.layout = layout
        self.key = key  # PostgreSQL values of layout.key
        self.write_time = write_time
        self.seq = seq  # batch_seq of the last folded event: breaks write-time ties in one CDC group
        self.delete = False
        self.keep = False  # soft delete of a row this batch wrote: upsert its cells, flagged deleted
        self.replace = False  # the row was deleted earlier in this batch: unset columns are NULL
        self.marker = False  # an INSERT wrote the row marker
        self.nulled = False  # some column was nulled/emptied: the row may have vanished (no marker)
        self.sets: dict[str, Any] = {}  # physical column -> PostgreSQL value
        self.colls: dict[str, Collection] = {}
        self.events = 0  # number of batch events folded into this plan
        self.indices: list[int] = []  # which ones (indices into the folded batch)


@dataclass
class Segment:
    """Row plans to apply, then (optionally) one partition/range delete event."""

    plans: dict[tuple[bool, tuple[Any, ...]], RowPlan] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)  # row/partition/range delete events (history)
    breaker: int | None = None  # index of a partition/range delete applied after the plans


@dataclass(frozen=True, slots=True)
class ColumnCodec:
    """What fold needs to know about one source column, computed once per table."""

    name: str
    type: CqlType
    static: bool  # stored in the static side table
    multicell: bool  # non-frozen collection/UDT: element deltas
    conv: Converter | None  # canonical value -> PostgreSQL value (None: the value as is)
    text: bool  # a scalar text column: check for U+0000 inline
    nul: Callable[[Any], bool] | None  # other types that can hold text: True when a value holds U+0000


class TableCodec:
    """Per-table converters from canonical event values to PostgreSQL values."""

    def __init__(
        self,
        columns: Sequence[Column],
        main: TargetLayout,
        static: TargetLayout | None,
        *,
        keys_only: bool = False,
        convs: Mapping[str, Converter] | None = None,
    ) -> None:
        """``convs``: per column, a conversion into the type of a user-created column, applied
        after cdcd's own (``convert.conversion``)."""
        self.main = main
        self.static = static
        # cdc delta 'keys': delta rows carry no values; each change takes its row from its postimage.
        self.keys_only = keys_only
        self.types: dict[str, CqlType] = {c.name: c.type for c in columns}
        self.conv: dict[str, Converter] = {c.name: to_pg(c.type) for c in columns}
        for name, extra in (convs or {}).items():
            if name in self.conv:
                self.conv[name] = _then(self.conv[name], extra)
        self.cols: dict[str, ColumnCodec] = {}
        for c in columns:
            if c.kind in ("partition_key", "clustering"):
                continue
            conv = self.conv[c.name]
            text = c.type.name in ("ascii", "text", "varchar")
            self.cols[c.name] = ColumnCodec(
                name=c.name,
                type=c.type,
                static=c.kind == "static",
                multicell=c.type.is_multicell,
                conv=None if conv is identity else conv,
                text=text,
                nul=None if text else nul_check(c.type),
            )
        # name -> (static, kind, converter): the per-value hot path of fold reads one tuple.
        self.fast: dict[str, tuple[bool, int, Converter | None]] = {}
        for cc in self.cols.values():
            if cc.multicell:
                kind = _MULTICELL
            elif cc.text:
                kind = _TEXT
            else:
                kind = _NESTED if cc.nul is not None else _PLAIN
            self.fast[cc.name] = (cc.static, kind, cc.conv)
        self.elem: dict[str, Converter] = {}
        for c in columns:
            t = c.type
            if t.is_multicell and t.name in ("list", "set"):
                self.elem[c.name] = to_pg(t.params[0]) if is_array(t) else json_value
            elif t.is_multicell and t.name == "map":
                self.elem[c.name] = json_value
        pk = [c for c in columns if c.kind == "partition_key"]
        # Frozen collections/tuples/UDTs in the key are lists/dicts in PostgreSQL value space.
        self.nested_keys = any(c.type.params or c.type.udt for c in main.key)
        self.ck_names = [c.name for c in columns if c.kind == "clustering"]
        self._keys = {
            False: [(c.name, self.conv[c.name], nul_check(c.type)) for c in main.key],
            True: [(c.name, self.conv[c.name], nul_check(c.type)) for c in pk],
        }

    def key_of(self, static: bool, key: Mapping[str, Any]) -> tuple[Any, ...]:
        """PostgreSQL values of the primary key (``static``: of the partition key) in ``key``;
        raises ValueError naming a missing key column or a value PostgreSQL cannot hold."""
        out = []
        for name, conv, nul in self._keys[static]:
            v = key.get(name)
            if v is None:
                raise ValueError(f"key column {name!r} is missing or null")
            if nul is not None and nul(v):
                raise ValueError(f"key column {name!r}: {NUL_REASON}")
            out.append(v if conv is identity else conv(v))
        return tuple(out)

    def range_matcher(self, rng: RangeBound) -> Callable[[Sequence[Any]], bool]:
        """Predicate over a row's clustering values as PostgreSQL returns them: is the row inside
        ``rng`` in CQL clustering order (DESC columns reversed)? For clustering types PostgreSQL
        does not sort as CQL does (sql.SQL_ORDERED)."""
        n = max(len(rng.start), len(rng.end))
        back = [from_pg(self.types[c]) for c in self.ck_names[:n]]
        keys = [cql_order_key(self.types[c]) for c in self.ck_names[:n]]
        desc = [o == "desc" for o in self.main.clustering_order[:n]]

        def cmp(row: Sequence[Any], bound: Sequence[Any]) -> int:
            for i, b in enumerate(bound):
                a, kb = keys[i](back[i](row[i])), keys[i](b)
                if a != kb:
                    r = -1 if a < kb else 1
                    return -r if desc[i] else r
            return 0

        def inside(row: Sequence[Any]) -> bool:
            if rng.start:
                c = cmp(row, rng.start)
                if c < 0 or (c == 0 and not rng.start_inclusive):
                    return False
            if rng.end:
                c = cmp(row, rng.end)
                if c > 0 or (c == 0 and not rng.end_inclusive):
                    return False
            return True

        return inside

    def range_bound(self, bound: Sequence[Any]) -> list[Any]:
        """PostgreSQL values of a clustering prefix (range delete bound)."""
        if len(bound) > len(self.ck_names):
            raise ValueError(f"range bound {bound!r} is longer than the clustering key")
        out = []
        for name, v in zip(self.ck_names, bound, strict=False):
            nul = nul_check(self.types[name])
            if nul is not None and nul(v):
                raise ValueError(NUL_REASON)
            out.append(self.conv[name](v))
        return out

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
        if t.name == "udt":
            assert t.udt is not None
            unknown = [f for f in keys if f not in t.udt.field_names]
            if unknown:
                raise ValueError(f"UDT {t.udt.name} has no field(s) {unknown}")
        return list(keys)  # list timeuuids, UDT field names


def _then(first: Converter, second: Converter) -> Converter:
    if first is identity:
        return lambda v: None if v is None else second(v)
    return lambda v: None if v is None else second(first(v))


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


class _Folder:
    """One pass over a batch (see ``fold``)."""

    def __init__(self, codec: TableCodec, soft: bool) -> None:
        self.codec = codec
        self.soft = soft
        self.segments = [Segment()]
        self.index = 0  # the event being folded

    def plan(self, static: bool, key: tuple[Any, ...], ev: ChangeEvent) -> RowPlan:
        plans = self.segments[-1].plans
        index = (static, row_key(key) if self.codec.nested_keys else key)
        plan = plans.get(index)
        if plan is None:
            layout = self.codec.static if static else self.codec.main
            assert layout is not None
            plan = plans[index] = RowPlan(layout, key, ev.write_time_us, ev.batch_seq)
        plan.events += 1
        plan.indices.append(self.index)
        return plan

    def event(self, i: int, ev: ChangeEvent) -> None:
        self.index = i
        codec = self.codec
        op = ev.op
        if op in _UPSERTS:
            static = ev.static
            if static and codec.static is None:
                raise ValueError("static-row change, but the table has no static columns")
            if codec.keys_only:
                self.from_image(self.plan(static, codec.key_of(static, ev.key), ev), ev, static)
                return
            if self.upsert(self.plan(static, codec.key_of(static, ev.key), ev), ev, static):
                # A clustered change that also wrote static cells (Scylla logs them as two rows;
                # be lenient if a producer did not split them): those go to the side table.
                if static or codec.static is None:
                    raise ValueError("a static-row change carries regular columns")
                self.upsert(self.plan(True, codec.key_of(True, ev.key), ev), ev, True)
            return
        if op in _WIDE_DELETES:
            codec.key_of(True, ev.key)
            if ev.range is not None:
                codec.range_bound(ev.range.start)
                codec.range_bound(ev.range.end)
            elif op == Op.RANGE_DELETE:
                raise ValueError("range delete without a range")
            seg = self.segments[-1]
            seg.breaker = i
            seg.deletes.append(i)
            self.segments.append(Segment())
            return
        if op in _ROW_DELETES:
            if ev.static:
                raise ValueError("row delete of a static row")
            plan = self.plan(False, codec.key_of(False, ev.key), ev)
            plan.delete, plan.nulled = True, False
            plan.keep = self.soft and bool(plan.sets or plan.colls)
            if not plan.keep:
                plan.replace, plan.marker = False, False
                plan.sets.clear()
                plan.colls.clear()
            plan.write_time, plan.seq = ev.write_time_us, ev.batch_seq
            self.segments[-1].deletes.append(i)
            return
        raise ValueError(f"operation {op.name} cannot be applied (images are not events)")

    def from_image(self, plan: RowPlan, ev: ChangeEvent, static: bool) -> None:
        """A change of a ``delta: 'keys'`` table: the postimage is the whole row after it."""
        image = ev.postimage
        if image is None:
            raise ValueError("the table logs keys only (cdc delta 'keys') and this change has no postimage")
        plan.delete = plan.keep = plan.nulled = False
        plan.colls.clear()
        layout = plan.layout
        for c in layout.values:
            value = image.get(c.name)
            cc = self.codec.cols[c.name]
            if value is None:
                plan.sets[c.name] = None
                plan.nulled = True
            elif (cc.text and "\x00" in value) or (cc.nul is not None and cc.nul(value)):
                raise ValueError(f"column {c.name!r}: {NUL_REASON}")
            else:
                plan.sets[c.name] = value if cc.conv is None else cc.conv(value)
            if c.name in layout.list_keys:
                plan.sets[LIST_KEYS_PREFIX + c.name] = None  # images carry no cell keys
        if ev.op is Op.INSERT and not static:
            plan.marker = True
        plan.write_time, plan.seq = ev.write_time_us, ev.batch_seq

    def upsert(self, plan: RowPlan, ev: ChangeEvent, static: bool) -> bool:
        """Fold the cells of ``ev`` stored in ``plan``'s table; True when ``ev`` also has cells of
        the other table (static vs regular)."""
        codec = self.codec
        cols = codec.cols
        other = False
        if plan.delete:  # delete then write again: the row starts empty
            plan.delete, plan.keep, plan.replace, plan.marker = False, False, True, False
            plan.sets.clear()
            plan.colls.clear()
        for name in ev.deleted:
            cc = cols.get(name)
            if cc is None:
                raise ValueError(f"column {name!r} is not in the target table")
            if cc.static is not static:
                other = True
            elif cc.multicell:
                plan.colls[name] = Collection(cleared=True)
                plan.sets.pop(name, None)
                plan.nulled = True
            else:
                plan.sets[name] = None
                plan.nulled = True
        sets = plan.sets
        fast = codec.fast
        for name, value in ev.values.items():
            info = fast.get(name)
            if info is None:
                raise ValueError(f"column {name!r} is not in the target table")
            col_static, kind, conv = info
            if col_static is not static:
                other = True
            elif kind == _PLAIN:
                sets[name] = value if conv is None else conv(value)
            elif kind == _TEXT:
                if value is not None and "\x00" in value:
                    raise ValueError(f"column {name!r}: {NUL_REASON}")
                sets[name] = value if conv is None else conv(value)
            else:
                nul = cols[name].nul
                if value is not None and nul is not None and nul(value):
                    raise ValueError(f"column {name!r}: {NUL_REASON}")
                if kind == _NESTED:
                    sets[name] = value if conv is None else conv(value)
                else:
                    coll = plan.colls.get(name)
                    if coll is None:
                        coll = plan.colls[name] = Collection(cleared=plan.replace)
                    coll.ops.append(("add", codec.added(name, value)))
        for name, keys in ev.deleted_elements.items():
            cc = cols.get(name)
            if cc is None:
                raise ValueError(f"column {name!r} is not in the target table")
            if cc.static is not static:
                other = True
                continue
            if not keys:
                continue
            if not cc.multicell:
                raise ValueError(f"deleted_elements for {name!r}, which is not a non-frozen collection")
            coll = plan.colls.get(name)
            if coll is None:
                coll = plan.colls[name] = Collection(cleared=plan.replace)
            coll.ops.append(("rm", codec.removed(name, keys)))
            plan.nulled = True
        if ev.op is Op.INSERT and not static:
            plan.marker = True
        plan.write_time, plan.seq = ev.write_time_us, ev.batch_seq
        return other


def fold(
    codec: TableCodec, events: Sequence[ChangeEvent], *, soft: bool = False
) -> tuple[list[Segment], dict[int, str]]:
    """Fold ``events`` (one table, stream order) into segments. ``soft``: deletes are soft, so a
    row written and then deleted within the batch is kept (flagged deleted) with its cells.

    Returns the segments and the events that can never be written (``{index: reason}``); when
    that dict is not empty the segments are incomplete and must not be applied.
    """
    folder = _Folder(codec, soft)
    bad: dict[int, str] = {}
    for i, ev in enumerate(events):
        try:
            folder.event(i, ev)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            bad[i] = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return [s for s in folder.segments if s.plans or s.breaker is not None], bad
