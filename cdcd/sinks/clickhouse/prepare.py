"""Events -> ClickHouse value space, before anything is read or written (pure; no I/O).

``prepare`` converts every event (bad values, unknown columns, static columns in clustering-row
events are bad rows with a reason); ``blind_keys`` names keys whose first event is a full-row
INSERT (no read-back needed); ``fresh_columns``/``bulk_columns`` turn a batch of full-row INSERTs
of distinct keys straight into insert columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcd.events import ChangeEvent, Op
from cdcd.schema import CqlType
from cdcd.sinks.clickhouse.codec import TableCodec, merge_into
from cdcd.sinks.clickhouse.sql import DELETED, DELETED_AT, EMPTY, IS_DELETED, MARKER, VERSION

__all__ = ["Prepared", "blind_keys", "bulk_columns", "fresh_columns", "prepare"]


# Shared empty containers of Prepared fields nothing adds to (never mutated: saves allocations).
_NONE_D: dict[str, Any] = {}
_NONE_L: list[str] = []
_ABSENT: Any = object()


@dataclass(slots=True)
class Prepared:
    """One event in ClickHouse value space."""

    index: int
    ev: ChangeEvent
    key: tuple[Any, ...]  # layout key (main: primary key, static: partition key) or partition key
    sets: dict[str, Any] = field(default_factory=dict)  # scalar / frozen columns
    cleared: list[str] = field(default_factory=list)  # columns in ``deleted``
    adds: dict[str, Any] = field(default_factory=dict)  # multicell additions
    removes: dict[str, Any] = field(default_factory=dict)  # multicell removals
    start: tuple[Any, ...] = ()
    end: tuple[Any, ...] = ()
    full: bool = False  # a main-table INSERT setting or clearing every column: the whole row
    empty: list[str] = field(default_factory=list)  # frozen collections set to an empty value


def _prepare_one(codec: TableCodec, i: int, ev: ChangeEvent) -> Prepared:
    op = ev.op if type(ev.op) is Op else Op(ev.op)
    if op is Op.PARTITION_DELETE or op is Op.RANGE_DELETE:
        key = tuple(codec.key_conv[c.name](ev.key[c.name]) for c in codec.schema.partition_key)
        p = Prepared(i, ev, key)
        if ev.op == Op.RANGE_DELETE:
            if ev.range is None:
                raise ValueError("range delete without a range")
            ck = codec.schema.clustering_key
            for attr, bound in (("start", ev.range.start), ("end", ev.range.end)):
                if len(bound) > len(ck):
                    raise ValueError(f"range bound {bound!r} is longer than the clustering key")
                setattr(p, attr, tuple(codec.key_conv[c.name](v) for c, v in zip(ck, bound, strict=False)))
        return p
    if op is not Op.INSERT and op is not Op.UPDATE and op is not Op.ROW_DELETE:
        raise ValueError(f"operation {op!r} cannot be applied")
    key_names = codec.static_key_names if ev.static else codec.main_key_names
    if key_names is None:
        raise ValueError("static row change, but the table has no static columns")
    evkey = ev.key
    kconv = codec.key_conv
    try:
        key = tuple([kconv[n](evkey[n]) for n in key_names])
    except KeyError:
        raise ValueError(f"key column(s) {[n for n in key_names if n not in evkey]} missing") from None
    if op is Op.ROW_DELETE:
        return Prepared(i, ev, key)
    static = ev.static
    stored = codec.static_cols if static else codec.main_cols
    plan = codec.static_plan if static else codec.main_plan
    cleared = [col for col in ev.deleted if col in stored] if ev.deleted else _NONE_L
    if len(cleared) != len(ev.deleted):
        raise ValueError(_other_layout(codec, static, set(ev.deleted) - stored))
    sets: dict[str, Any] = {}
    adds: dict[str, Any] = _NONE_D
    removes: dict[str, Any] = _NONE_D
    for col, value in ev.values.items():
        f = plan.get(col, _ABSENT)
        if f is _ABSENT:
            raise ValueError(_other_layout(codec, static, {col}))
        try:
            if f is not None:
                sets[col] = f(value)
            else:
                if adds is _NONE_D:
                    adds = {}
                adds[col] = _adds(codec, col, codec.types[col], value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"column {col!r} ({codec.types[col].cql()}): {exc}") from None
    for col, keys in ev.deleted_elements.items():
        if col not in stored:
            raise ValueError(_other_layout(codec, static, {col}))
        if keys:
            t = codec.types[col]
            try:
                if removes is _NONE_D:
                    removes = {}
                removes[col] = _removes(codec, col, t, keys)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"column {col!r} ({t.cql()}) removed elements: {exc}") from None
    empty = _NONE_L
    if codec.frozen_collections:
        values = ev.values
        empty = [c for c in codec.frozen_collections & sets.keys() if values[c] is not None and not values[c]]
    full = (
        op is Op.INSERT
        and not static
        and (len(sets) == len(codec.main_cols) or codec.main_cols <= (sets.keys() | cleared))
    )
    return Prepared(i, ev, key, sets, cleared, adds, removes, full=full, empty=empty)


def _other_layout(codec: TableCodec, static: bool, cols: set[str]) -> str:
    names = sorted(cols)
    if static:
        return f"column(s) {names} are not static, but the event changes the static row"
    if codec.static is None:
        return f"column(s) {names} cannot be written by a row change"
    return f"column(s) {names} are static, but the event changes a clustering row"


def _adds(codec: TableCodec, col: str, t: CqlType, value: Any) -> Any:
    if value is None:
        return []
    if t.name == "list":
        if not isinstance(value, Mapping):
            raise ValueError("a non-frozen list delta must map cell timeuuids to values")
        return [(_uuid(k), codec.elem[col](v)) for k, v in value.items()]
    if t.name == "set":
        return [codec.elem[col](v) for v in value]
    if t.name == "map":
        return [(codec.elem[col](k), codec.map_value[col](v)) for k, v in value.items()]
    index = codec.udt_index[col]
    convs = codec.udt_fields[col]
    return [(index[f], convs[index[f]](v)) for f, v in value.items()]


def _removes(codec: TableCodec, col: str, t: CqlType, keys: Iterable[Any]) -> Any:
    if t.name == "list":
        return [_uuid(k) for k in keys]
    if t.name in ("set", "map"):
        return [codec.elem[col](k) for k in keys]
    index = codec.udt_index[col]
    return [index[f] for f in keys]


def _uuid(k: Any) -> Any:
    if getattr(k, "version", None) != 1:
        raise ValueError(f"list cell key {k!r} is not a timeuuid")
    return k


def prepare(codec: TableCodec, events: Sequence[ChangeEvent]) -> tuple[list[Prepared], dict[int, str]]:
    """Convert every event; returns the prepared events and ``{index: reason}`` for bad ones.
    Columns the source table does not have are bad rows too (never silently dropped)."""
    out: list[Prepared] = []
    bad: dict[int, str] = {}
    known = codec.names
    for i, ev in enumerate(events):
        if not (ev.values.keys() <= known and ev.deleted <= known and ev.deleted_elements.keys() <= known):
            unknown = {*ev.values, *ev.deleted, *ev.deleted_elements} - known
            bad[i] = f"column(s) {sorted(unknown)} not in the target table"
            continue
        try:
            out.append(_prepare_one(codec, i, ev))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            bad[i] = str(exc) or type(exc).__name__
    return out, bad


def blind_keys(codec: TableCodec, prepared: Iterable[Prepared]) -> set[Any]:
    """Hashed main-table keys whose first event in the batch is a full-row INSERT (every column
    set or cleared, non-frozen collections overwritten), so their stored row need not be read back.

    Such a key's new row does not depend on the stored one, and ReplacingMergeTree keeps the newest
    ``_cdc_version`` by itself: a stale full INSERT (a replay) is stored as an older version that
    ``FINAL`` never shows, instead of being skipped and counted in ``skipped_stale``; the sink
    therefore reads back, all the same, keys whose event may be older than their row (sink.py
    ``_seen``), to report stale and duplicate events. Events after
    it in the batch fold on top of it, which is the stored state again when the stream is replayed
    in order (CDC keeps per-key order).
    """
    seen: set[Any] = set()
    out: set[Any] = set()
    hkey = codec.hkey
    for p in prepared:
        ev = p.ev
        if ev.static or ev.op not in (Op.INSERT, Op.UPDATE, Op.ROW_DELETE):
            continue
        hk = hkey(p.key)
        if hk in seen:
            continue
        seen.add(hk)
        if p.full:
            out.add(hk)
    return out


def bulk_columns(codec: TableCodec, events: Sequence[ChangeEvent]) -> dict[str, list[Any]] | None:
    """``fresh_columns(codec, prepare(codec, events))`` for the plainest bulk batch, converted
    column by column (``types.to_ch_column``) without a per-event step: only INSERTs of clustering
    rows with distinct keys, each setting exactly every column, in a table without non-frozen
    collections/UDTs. None for any other batch or any bad value (the general path then names the
    bad rows)."""
    want = codec.main_cols
    if not events or codec.multicell & want:
        return None
    insert = Op.INSERT
    for ev in events:
        if ev.op is not insert or ev.static or ev.deleted or ev.deleted_elements or ev.values.keys() != want:
            return None
    layout = codec.main
    out: dict[str, list[Any]] = {}
    try:
        for name in layout.key_names:
            out[name] = codec.key_column[name]([ev.key[name] for ev in events])
        keys = list(zip(*(out[n] for n in layout.key_names), strict=True))
        if len(set(map(codec.hkey, keys))) != len(events):
            return None
        for name in layout.value_columns():
            out[name] = codec.column[name]([ev.values[name] for ev in events])
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return None
    n = len(events)
    out[VERSION] = [ev.write_time_us for ev in events]
    out[IS_DELETED] = [0] * n
    out[DELETED] = [0] * n
    out[DELETED_AT] = [None] * n
    out[MARKER] = [1] * n
    frozen = sorted(codec.frozen_collections)
    out[EMPTY] = [[c for c in frozen if ev.values[c] is not None and not ev.values[c]] for ev in events]
    return out


def fresh_columns(codec: TableCodec, prepared: Sequence[Prepared]) -> dict[str, list[Any]] | None:
    """The main-table columns (physical name -> values, in table order) of a batch made only of
    full-row INSERTs of distinct keys, the common bulk case: built column by column, the same rows
    ``BatchState`` gives with every key blind, at a fraction of the cost. None for other batches."""
    if not prepared or not all(p.full for p in prepared):
        return None
    hkey = codec.hkey
    if len({hkey(p.key) for p in prepared}) != len(prepared):
        return None
    layout = codec.main
    types = codec.types
    rows: list[dict[str, Any]] = []
    for p in prepared:
        vals = p.sets
        if p.adds or p.removes:
            vals = vals.copy()
            for col, adds in p.adds.items():
                merge_into(codec, vals, col, types[col], adds, add=True)
            for col, rms in p.removes.items():
                merge_into(codec, vals, col, types[col], rms, add=False)
        rows.append(vals)
    out: dict[str, list[Any]] = {}
    for j, name in enumerate(layout.key_names):
        out[name] = [p.key[j] for p in prepared]
    empty = codec.empty
    for c in layout.value_columns():
        e = empty[c]
        out[c] = [v.get(c, e) for v in rows]
    n = len(prepared)
    out[VERSION] = [p.ev.write_time_us for p in prepared]
    out[IS_DELETED] = [0] * n
    out[DELETED] = [0] * n
    out[DELETED_AT] = [None] * n
    out[MARKER] = [1] * n
    out[EMPTY] = [sorted(p.empty) for p in prepared]
    return out
