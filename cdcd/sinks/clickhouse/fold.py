"""Fold a batch of change events into FULL ClickHouse rows (pure; no I/O).

ClickHouse has no partial updates: every change is a new version of the whole row. So a batch is
applied in memory, in order, on the current rows read back from ClickHouse (``BatchState.load``):

1. ``prepare`` converts every event to ClickHouse value space first (types.py), so bad values are
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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdcd.events import Op
from cdcd.sinks import Skipped
from cdcd.sinks.clickhouse.codec import TableCodec, is_empty, merge_into
from cdcd.sinks.clickhouse.prepare import Prepared, blind_keys, bulk_columns, fresh_columns, prepare
from cdcd.sinks.clickhouse.sql import DELETED, DELETED_AT, EMPTY, IS_DELETED, MARKER, VERSION, ChLayout
from cdcd.sinks.clickhouse.types import (
    LIST_KEYS_PREFIX,
    Converter,
    as_list,
    identity,
)
from cdcd.sinks.outcome import compare

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


@dataclass(slots=True)
class Row:
    """A row (or partition's static row) while the batch is applied."""

    key: tuple[Any, ...]
    values: dict[str, Any]
    version: int = 0
    marker: bool = False
    empty: set[str] = field(default_factory=set)  # frozen collections holding an empty value
    live: bool = False
    stored_live: bool = False  # a live row in ClickHouse before this batch
    stored_soft: bool = False  # a soft-deleted row in ClickHouse before this batch
    blind: bool = False  # not read back: the stored version is unknown (may be live)
    deleted_at: int | None = None
    dirty: bool = False
    events: list[int] = field(default_factory=list)


class BatchState:
    """Rows of one batch, keyed by (static, key)."""

    def __init__(
        self, codec: TableCodec, strategy: str, *, staleness: str = "timestamp", version: str | None = None
    ) -> None:
        self.codec = codec
        self.soft = strategy == "soft"
        self.staleness = staleness
        self.version = version  # the version column (None: write time alone)
        self.verdicts: dict[int, Skipped] = {}  # events the version guard skipped
        self.rows: dict[tuple[bool, Any], Row] = {}
        self.blind: set[Any] = set()  # hashed main-table keys not read back (see ``blind_keys``)
        self.partitions: dict[Any, dict[Any, Row]] = {}  # partition key -> main rows in state
        self.applied = 0
        self.skipped = 0

    # -- loading -------------------------------------------------------------------------------
    def load(self, static: bool, layout: ChLayout, rows: Iterable[Sequence[Any]]) -> None:
        """Rows read back with ``sql.read_sql`` (columns = ``layout.all_columns()``, Strings
        read as ``codec.read_formats`` says)."""
        names = layout.all_columns()
        pos = {n: i for i, n in enumerate(names)}
        readers = [(i, r) for i, n in enumerate(names) if (r := self._reader(n)) is not identity]
        nkey = len(layout.key)
        values = [(c, pos[c]) for c in layout.value_columns()]
        i_ver, i_del, i_soft, i_mark = pos[VERSION], pos[IS_DELETED], pos[DELETED], pos[MARKER]
        i_empty = pos[EMPTY]
        for raw in rows:
            vals = list(raw)
            for i, r in readers:
                vals[i] = r(vals[i])
            self._stored(
                static, layout, tuple(vals[:nkey]), {c: vals[i] for c, i in values},
                vals[i_ver], vals[i_del], vals[i_soft], vals[i_mark], vals[i_empty],
            )  # fmt: skip

    def load_records(self, static: bool, layout: ChLayout, records: Iterable[dict[str, Any]]) -> None:
        """Rows as this sink inserted them (``output`` records; see cache.py)."""
        key_names = layout.key_names
        value_cols = layout.value_columns()
        for rec in records:
            self._stored(
                static, layout, tuple([rec[k] for k in key_names]), {c: rec[c] for c in value_cols},
                rec[VERSION], rec[IS_DELETED], rec[DELETED], rec[MARKER], rec.get(EMPTY),
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
        empty: Any,
    ) -> None:
        live = not is_deleted and not soft
        row = Row(
            key=key,
            values=values,
            version=int(version),
            marker=bool(marker),
            empty=set(empty or ()),
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
                self._skip(p.index, row, wt == row.version)
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
        version = self.version
        if version is not None and row.live:
            mine = p.sets.get(version) if version in p.sets else None
            c = compare(self.staleness, (mine, wt, 0), (row.values.get(version), row.version, 0))
        else:
            c = 1 if wt > row.version else 0 if wt == row.version else -1
        if c <= 0:
            self._skip(p.index, row, c == 0)
            return
        self.applied += 1
        if wt <= row.version:  # a higher version written earlier: ReplacingMergeTree keeps the
            wt = row.version + 1  # greatest _cdc_version, so this one must be greater
        codec = self.codec
        vals = row.values
        if not row.live:  # deleted (or never existed): the row starts empty
            vals.clear()
            row.marker = False
            row.empty.clear()
        for col in p.cleared:
            vals.pop(col, None)
            vals.pop(LIST_KEYS_PREFIX + col, None)
        vals.update(p.sets)
        if codec.frozen_collections and (row.empty or p.empty):
            row.empty.difference_update(p.sets.keys(), p.cleared)
            row.empty.update(p.empty)
        for col, adds in p.adds.items():
            merge_into(codec, vals, col, codec.types[col], adds, add=True)
        for col, rms in p.removes.items():
            merge_into(codec, vals, col, codec.types[col], rms, add=False)
        if ev.op == Op.INSERT and not ev.static:
            row.marker = True
        row.version = wt
        row.live = True
        row.dirty = True
        row.deleted_at = None
        layout = codec.layout_of(ev.static)
        assert layout is not None
        if not row.marker and not row.empty and all(is_empty(vals.get(c)) for c in layout.value_columns()):
            row.live = False  # no row marker and no live cell: the row no longer exists
            row.deleted_at = wt

    def _skip(self, index: int, row: Row, same: bool) -> None:
        """The version guard skipped event ``index``: a duplicate when the row holds its version,
        else stale (possibly a duplicate after all: see ``skipped_events``)."""
        self.skipped += 1
        self.verdicts[index] = Skipped(
            index,
            "duplicate" if same else "stale",
            row_write_time_us=row.version,
            row_version=row.values.get(self.version) if self.version is not None else None,
        )

    def skipped_events(self) -> list[Skipped]:
        """Per event, what the guard skipped. An event older than its row is a ``duplicate``, not
        stale, when a later event of the same row in this batch is a duplicate: the batch is a
        replay, whose earlier events the row's version had already superseded."""
        if not self.verdicts:
            return []
        out = self.verdicts
        for row in self.rows.values():
            last_dup = max((i for i in row.events if i in out and out[i].reason == "duplicate"), default=-1)
            for i in row.events:
                if i < last_dup and i in out and out[i].reason == "stale":
                    out[i] = msgspec.structs.replace(out[i], reason="duplicate")
        return sorted(out.values(), key=lambda x: x.index)

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
                        EMPTY: sorted(row.empty),
                    }
                )
            elif self.soft and (row.stored_live or row.stored_soft or row.blind):
                rec.update({c: row.values.get(c, empty[c]) for c in value_cols})
                rec.update({VERSION: row.version, IS_DELETED: 0, DELETED: 1, DELETED_AT: row.deleted_at,
                            MARKER: int(row.marker), EMPTY: sorted(row.empty)})  # fmt: skip
            elif not self.soft and (row.stored_live or row.blind):
                rec.update({c: empty[c] for c in value_cols})
                rec.update(
                    {VERSION: row.version, IS_DELETED: 1, DELETED: 0, DELETED_AT: None, MARKER: 0, EMPTY: []}
                )
            else:
                continue
            out.append((row, rec))
        return out
