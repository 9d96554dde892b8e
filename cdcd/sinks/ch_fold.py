"""Fold a batch of change events into FULL ClickHouse rows (pure; no I/O).

ClickHouse has no partial updates: every change is a new version of the whole row. So a batch is
applied in memory, in order, on the current rows read back from ClickHouse (``BatchState.load``):

1. ``prepare`` converts every event to ClickHouse value space first (ch_types), so bad values are
   bad rows before anything is read or written.
2. ``BatchState.apply`` replays the events: the version guard skips an event whose write time is
   not newer than the row (a delete wins a tie); partial updates keep the other columns; deleted
   columns become null/empty; collection deltas are exact (list cells by timeuuid, set add/remove,
   map put/remove, UDT fields; an overwrite is clear + add); a delete then a write starts the row
   empty; a row created only by UPDATEs vanishes when all its columns become null (no row marker);
   partition and clustering-range deletes kill the live rows they cover, in clustering order.
3. ``BatchState.output`` gives one row per touched key: the new version, a delete marker
   (``_cdc_is_deleted = 1``) for a hard delete of a stored row, or the old row flagged
   ``_cdc_deleted`` (soft delete).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdcd.events import ChangeEvent, Op, timeuuid_sort_key
from cdcd.schema import CqlType, TableSchema
from cdcd.sinks.ch_sql import DELETED, DELETED_AT, IS_DELETED, MARKER, VERSION, ChLayout
from cdcd.sinks.ch_types import (
    LIST_KEYS_PREFIX,
    Converter,
    as_list,
    freeze,
    from_read,
    holds_blob,
    identity,
    is_map_array,
    order_key,
    to_ch,
    to_ch_column,
)

__all__ = [
    "BatchState",
    "Prepared",
    "Row",
    "TableCodec",
    "blind_keys",
    "bulk_columns",
    "fresh_columns",
    "prepare",
]


def _empty_of(t: CqlType) -> Any:
    if t.name in ("list", "set"):
        return []
    if t.name == "map":
        return [] if is_map_array(t) else {}
    return None


def _is_empty(v: Any) -> bool:
    return v is None or (isinstance(v, list | dict) and not v)


class TableCodec:
    """Per-table converters, value-space helpers and layouts."""

    def __init__(self, schema: TableSchema, main: ChLayout, static: ChLayout | None) -> None:
        self.schema = schema
        self.main = main
        self.static = static
        self.types: dict[str, CqlType] = {c.name: c.type for c in schema.columns}
        self.names = frozenset(self.types)
        keys = {c.name for c in schema.primary_key}
        self.key_conv = {c.name: to_ch(c.type, nullable=False) for c in schema.primary_key}
        self.conv: dict[str, Converter] = {n: to_ch(t) for n, t in self.types.items() if n not in keys}
        self.key_column = {c.name: to_ch_column(c.type, nullable=False) for c in schema.primary_key}
        self.column = {n: to_ch_column(t) for n, t in self.types.items() if n not in keys}
        blobs = {n for n, t in self.types.items() if holds_blob(t)}
        # Columns holding a blob are read back with Strings as bytes; the rest with Strings as str.
        self.read_formats = {n: "bytes" for n in blobs}
        self.read: dict[str, Converter] = {n: from_read(t, n in blobs) for n, t in self.types.items()}
        self.empty: dict[str, Any] = {n: _empty_of(t) for n, t in self.types.items()}
        self.elem: dict[str, Converter] = {}
        self.elem_key: dict[str, Converter] = {}  # CQL order of set elements / map keys
        self.map_value: dict[str, Converter] = {}
        self.udt_index: dict[str, dict[str, int]] = {}
        self.udt_fields: dict[str, list[Converter]] = {}
        for n, t in self.types.items():
            self.empty[LIST_KEYS_PREFIX + n] = []
            if not t.is_multicell:
                continue
            if t.name in ("list", "set"):
                self.elem[n] = to_ch(t.params[0], nullable=False)
                self.elem_key[n] = order_key(t.params[0])
            elif t.name == "map":
                self.elem[n] = to_ch(t.params[0], nullable=False)
                self.elem_key[n] = order_key(t.params[0])
                self.map_value[n] = to_ch(t.params[1], nullable=False)
            else:
                assert t.udt is not None
                self.udt_index[n] = {f: i for i, f in enumerate(t.udt.field_names)}
                self.udt_fields[n] = [to_ch(ft) for ft in t.udt.field_types]
        ck = schema.clustering_key
        self.ck_order = [order_key(c.type) for c in ck]
        self.ck_desc = [o == "desc" for o in schema.clustering_order] + [False] * len(ck)
        # Key tuples holding lists/dicts (frozen collections in the key) are frozen for hashing.
        self.hash_keys = any(_holds_collection(c.type) for c in schema.primary_key)
        self.multicell = {n for n, t in self.types.items() if t.is_multicell}
        self.main_key_names: tuple[str, ...] | None = main.key_names
        self.static_key_names = static.key_names if static else None
        self.main_cols = {c.name for c in main.values}
        # Column -> converter (None: a non-frozen collection/UDT, merged by element) per layout.
        self.main_plan: dict[str, Converter | None] = {
            c.name: None if c.name in self.multicell else self.conv[c.name] for c in main.values
        }
        self.static_plan: dict[str, Converter | None] = {
            c.name: None if c.name in self.multicell else self.conv[c.name]
            for c in (static.values if static else ())
        }
        self.static_cols = {c.name for c in static.values} if static else set()

    def hkey(self, key: tuple[Any, ...]) -> Any:
        return freeze(key) if self.hash_keys else key

    def layout_of(self, static: bool) -> ChLayout | None:
        return self.static if static else self.main

    def in_range(
        self, ck: Sequence[Any], start: Sequence[Any], s_incl: bool, end: Sequence[Any], e_incl: bool
    ) -> bool:
        if start:
            c = self._cmp(ck, start)
            if c < 0 or (c == 0 and not s_incl):
                return False
        if end:
            c = self._cmp(ck, end)
            if c > 0 or (c == 0 and not e_incl):
                return False
        return True

    def _cmp(self, ck: Sequence[Any], bound: Sequence[Any]) -> int:
        """Compare a row's clustering key with a bound prefix in CLUSTERING order (DESC flips)."""
        for i, b in enumerate(bound):
            ka, kb = self.ck_order[i](ck[i]), self.ck_order[i](b)
            if ka != kb:
                r = -1 if ka < kb else 1
                return -r if self.ck_desc[i] else r
        return 0


def _holds_collection(t: CqlType) -> bool:
    if t.is_collection:
        return True
    params = t.udt.field_types if t.udt is not None else t.params
    return any(_holds_collection(p) for p in params)


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
    full = (
        op is Op.INSERT
        and not static
        and (len(sets) == len(codec.main_cols) or codec.main_cols <= (sets.keys() | cleared))
    )
    return Prepared(i, ev, key, sets, cleared, adds, removes, full=full)


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
    ``FINAL`` never shows, instead of being skipped and counted in ``skipped_stale``. Events after
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
    column by column (``ch_types.to_ch_column``) without a per-event step: only INSERTs of clustering
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
                _merge_into(codec, vals, col, types[col], adds, add=True)
            for col, rms in p.removes.items():
                _merge_into(codec, vals, col, types[col], rms, add=False)
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
    return out


@dataclass(slots=True)
class Row:
    """A row (or partition's static row) while the batch is applied."""

    key: tuple[Any, ...]
    values: dict[str, Any]
    version: int = 0
    marker: bool = False
    live: bool = False
    stored_live: bool = False  # a live row in ClickHouse before this batch
    stored_soft: bool = False  # a soft-deleted row in ClickHouse before this batch
    blind: bool = False  # not read back: the stored version is unknown (may be live)
    deleted_at: int | None = None
    dirty: bool = False
    events: list[int] = field(default_factory=list)


class BatchState:
    """Rows of one batch, keyed by (static, key)."""

    def __init__(self, codec: TableCodec, strategy: str) -> None:
        self.codec = codec
        self.soft = strategy == "soft"
        self.rows: dict[tuple[bool, Any], Row] = {}
        self.blind: set[Any] = set()  # hashed main-table keys not read back (see ``blind_keys``)
        self.partitions: dict[Any, dict[Any, Row]] = {}  # partition key -> main rows in state
        self.applied = 0
        self.skipped = 0

    # -- loading -------------------------------------------------------------------------------
    def load(self, static: bool, layout: ChLayout, rows: Iterable[Sequence[Any]]) -> None:
        """Rows read back with ``ch_sql.read_sql`` (columns = ``layout.all_columns()``, Strings
        read as ``codec.read_formats`` says)."""
        names = layout.all_columns()
        pos = {n: i for i, n in enumerate(names)}
        readers = [(i, r) for i, n in enumerate(names) if (r := self._reader(n)) is not identity]
        nkey = len(layout.key)
        values = [(c, pos[c]) for c in layout.value_columns()]
        i_ver, i_del, i_soft, i_mark = pos[VERSION], pos[IS_DELETED], pos[DELETED], pos[MARKER]
        for raw in rows:
            vals = list(raw)
            for i, r in readers:
                vals[i] = r(vals[i])
            self._stored(
                static, layout, tuple(vals[:nkey]), {c: vals[i] for c, i in values},
                vals[i_ver], vals[i_del], vals[i_soft], vals[i_mark],
            )  # fmt: skip

    def load_records(self, static: bool, layout: ChLayout, records: Iterable[dict[str, Any]]) -> None:
        """Rows as this sink inserted them (``output`` records; see ch_cache)."""
        key_names = layout.key_names
        value_cols = layout.value_columns()
        for rec in records:
            self._stored(
                static, layout, tuple([rec[k] for k in key_names]), {c: rec[c] for c in value_cols},
                rec[VERSION], rec[IS_DELETED], rec[DELETED], rec[MARKER],
            )  # fmt: skip

    def _stored(  # noqa: PLR0917
        self,
        static: bool,
        layout: ChLayout,
        key: tuple[Any, ...],
        values: dict[str, Any],
        version: Any,
        is_deleted: Any,
        soft: Any,
        marker: Any,
    ) -> None:
        live = not is_deleted and not soft
        row = Row(
            key=key,
            values=values,
            version=int(version),
            marker=bool(marker),
            live=live,
            stored_live=live,
            stored_soft=bool(soft) and not is_deleted,
        )
        self._put(static, layout, row)

    def _reader(self, col: str) -> Converter:
        if col in self.codec.read:
            return self.codec.read[col]
        if col.startswith(LIST_KEYS_PREFIX):
            return as_list
        return identity

    def _put(self, static: bool, layout: ChLayout, row: Row) -> Row:
        self.rows[(static, self.codec.hkey(row.key))] = row
        if not static:
            part = self.codec.hkey(row.key[: layout.partition_width])
            self.partitions.setdefault(part, {})[self.codec.hkey(row.key)] = row
        return row

    def _row(self, static: bool, key: tuple[Any, ...]) -> Row:
        row = self.rows.get((static, self.codec.hkey(key)))
        if row is None:
            layout = self.codec.layout_of(static)
            assert layout is not None
            hk = self.codec.hkey(key)
            row = self._put(static, layout, Row(key=key, values={}, blind=not static and hk in self.blind))
        return row

    # -- applying ------------------------------------------------------------------------------
    def apply(self, p: Prepared) -> None:
        ev = p.ev
        if ev.op in (Op.INSERT, Op.UPDATE):
            self._upsert(p)
        elif ev.op == Op.ROW_DELETE:
            row = self._row(ev.static, p.key)
            row.events.append(p.index)
            wt = ev.write_time_us
            if wt < row.version or (wt == row.version and not row.live):  # older, or a replay
                self.skipped += 1
                return
            self.applied += 1
            self._kill(row, ev.write_time_us)
        else:
            self.applied += 1
            self._wide_delete(p)

    def _kill(self, row: Row, wt: int) -> None:
        if row.live:
            row.live = False
            row.deleted_at = wt
            row.version = wt
            row.dirty = True
        elif wt > row.version:
            row.version = wt  # a later, older write stays shadowed (as by a Scylla tombstone)
            if row.blind:  # the stored row is unknown: write the delete marker anyway
                row.dirty = True
                row.deleted_at = wt

    def _wide_delete(self, p: Prepared) -> None:
        wt = p.ev.write_time_us
        codec = self.codec
        part = codec.hkey(p.key)
        if p.ev.op == Op.PARTITION_DELETE and codec.static is not None:
            srow = self.rows.get((True, part))
            if srow is not None and srow.version <= wt:
                srow.events.append(p.index)
                self._kill(srow, wt)
        width = codec.main.partition_width
        for row in list(self.partitions.get(part, {}).values()):
            if row.version > wt:
                continue
            if p.ev.op == Op.RANGE_DELETE:
                r = p.ev.range
                assert r is not None
                if not codec.in_range(row.key[width:], p.start, r.start_inclusive, p.end, r.end_inclusive):
                    continue
            row.events.append(p.index)
            self._kill(row, wt)

    def _upsert(self, p: Prepared) -> None:
        ev = p.ev
        row = self._row(ev.static, p.key)
        row.events.append(p.index)
        wt = ev.write_time_us
        if wt <= row.version:
            self.skipped += 1
            return
        self.applied += 1
        codec = self.codec
        vals = row.values
        if not row.live:  # deleted (or never existed): the row starts empty
            vals.clear()
            row.marker = False
        for col in p.cleared:
            vals.pop(col, None)
            vals.pop(LIST_KEYS_PREFIX + col, None)
        vals.update(p.sets)
        for col, adds in p.adds.items():
            _merge_into(codec, vals, col, codec.types[col], adds, add=True)
        for col, rms in p.removes.items():
            _merge_into(codec, vals, col, codec.types[col], rms, add=False)
        if ev.op == Op.INSERT and not ev.static:
            row.marker = True
        row.version = wt
        row.live = True
        row.dirty = True
        row.deleted_at = None
        layout = codec.layout_of(ev.static)
        assert layout is not None
        if not row.marker and all(_is_empty(vals.get(c)) for c in layout.value_columns()):
            row.live = False  # no row marker and no live cell: the row no longer exists
            row.deleted_at = wt

    # -- output --------------------------------------------------------------------------------
    def output(self, static: bool) -> list[tuple[Row, dict[str, Any]]]:
        """Rows to insert for one layout: (state row, physical column -> value)."""
        layout = self.codec.layout_of(static)
        if layout is None:
            return []
        empty = self.codec.empty
        value_cols = layout.value_columns()
        key_names = layout.key_names
        out = []
        for (is_static, _), row in self.rows.items():
            if is_static != static or not row.dirty:
                continue
            rec = dict(zip(key_names, row.key, strict=True))
            if row.live:
                rec.update({c: row.values.get(c, empty[c]) for c in value_cols})
                rec.update(
                    {
                        VERSION: row.version,
                        IS_DELETED: 0,
                        DELETED: 0,
                        DELETED_AT: None,
                        MARKER: int(row.marker),
                    }
                )
            elif self.soft and (row.stored_live or row.stored_soft or row.blind):
                rec.update({c: row.values.get(c, empty[c]) for c in value_cols})
                rec.update({VERSION: row.version, IS_DELETED: 0, DELETED: 1, DELETED_AT: row.deleted_at,
                            MARKER: int(row.marker)})  # fmt: skip
            elif not self.soft and (row.stored_live or row.blind):
                rec.update({c: empty[c] for c in value_cols})
                rec.update({VERSION: row.version, IS_DELETED: 1, DELETED: 0, DELETED_AT: None, MARKER: 0})
            else:
                continue
            out.append((row, rec))
        return out


def _merge_into(
    codec: TableCodec, vals: dict[str, Any], col: str, t: CqlType, arg: Any, *, add: bool
) -> None:
    """Apply one collection/UDT delta to ``vals`` (a row's physical values), exactly."""
    if t.name == "list":
        kc = LIST_KEYS_PREFIX + col
        cells = dict(zip(vals.get(kc) or [], vals.get(col) or [], strict=False))
        if add:
            cells.update(arg)
        else:
            for k in arg:
                cells.pop(k, None)
        ordered = sorted(cells.items(), key=lambda kv: timeuuid_sort_key(kv[0]))
        vals[col] = [v for _, v in ordered]
        vals[kc] = [k for k, _ in ordered]
    elif t.name == "set":
        elems = {freeze(x): x for x in vals.get(col) or []}
        for x in arg:
            if add:
                elems[freeze(x)] = x
            else:
                elems.pop(freeze(x), None)
        vals[col] = sorted(elems.values(), key=codec.elem_key[col])
    elif t.name == "map":
        cur = vals.get(col) or ([] if is_map_array(t) else {})
        entries = {freeze(k): (k, v) for k, v in (cur if isinstance(cur, list) else cur.items())}
        if add:
            entries.update((freeze(k), (k, v)) for k, v in arg)
        else:
            for k in arg:
                entries.pop(freeze(k), None)
        ordered = sorted(entries.values(), key=lambda kv: codec.elem_key[col](kv[0]))
        vals[col] = ordered if is_map_array(t) else dict(ordered)
    else:  # non-frozen UDT
        n = len(codec.udt_index[col])
        fields = list(vals.get(col) or (None,) * n)
        if add:
            for i, v in arg:
                fields[i] = v
        else:
            for i in arg:
                fields[i] = None
        vals[col] = tuple(fields) if any(f is not None for f in fields) else None
