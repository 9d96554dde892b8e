"""CDC log group -> ``ChangeEvent`` list. Pure functions, no I/O (scylla-cdc.md §1.2, §2, §3.2).

A *group* is every log row with one (``cdc$stream_id``, ``cdc$time``), ``cdc$batch_seq_no`` 0..n,
the last one carrying ``cdc$end_of_batch = true``. Rows are mappings keyed by the real log column
names (``cdc$operation``, ``cdc$deleted_v``...), as ``dict_factory`` returns them.

Decoding rules:

* ops 1 (update) and 2 (insert): one event each; ``values`` holds the columns the row wrote
  (``delta_value`` forms), ``deleted`` the columns with ``cdc$deleted_X = true`` (set to null, or
  cleared before an overwrite when ``values`` also has the column), ``deleted_elements`` the
  removed collection elements / UDT field names. All clustering columns null with op 1 in a table
  that has clustering columns is a static-row change: ``static=True``, ``key`` = partition key only.
* op 3 row delete, op 4 partition delete (``key`` = partition key only).
* ops 5/6 + 7/8: each start/end pair becomes ONE ``Op.RANGE_DELETE`` event with a ``RangeBound``
  built from the clustering prefixes (trailing nulls dropped; all-null = unbounded side);
  ``batch_seq`` is the start row's.
* ops -3/-4 (rows/partitions removed by Scylla itself: per-row TTL expiry, Alternator TTL) are
  decoded deliberately as ``Op.ROW_DELETE`` / ``Op.PARTITION_DELETE``: the destination must
  forget the row just as the source did.
* ops 0/9 (pre/postimage) are never events: they are attached to the delta of the same primary
  key (static images to the static change), never by adjacency: a preimage to the first delta of
  that key in the group, a postimage to the last. An image dict holds the key columns plus the
  columns the image includes (``canonical`` forms; non-frozen lists as ``list``); "included but
  null" columns map to ``None``. Images of keys without a delta are dropped.
* ``delta: 'keys'`` tables: delta rows carry no values, so events have keys/op/ttl only, plus
  their images.
* Any other ``cdc$operation``, a range bound without its partner, a malformed key, or a value
  that has no canonical form raises ``UndecodableGroup`` (an ``InvalidRecord``); the caller routes
  it, the group is never silently dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from cdcd.errors import InvalidRecord
from cdcd.events import ChangeEvent, Op, Position, RangeBound, timeuuid_to_micros
from cdcd.schema import Column, TableSchema
from cdcd.scylla import values as conv

__all__ = [
    "META_COLUMNS",
    "LogDecoder",
    "UndecodableGroup",
    "log_column_names",
]

STREAM_ID = "cdc$stream_id"
TIME = "cdc$time"
BATCH_SEQ = "cdc$batch_seq_no"
OPERATION = "cdc$operation"
TTL = "cdc$ttl"
END_OF_BATCH = "cdc$end_of_batch"
META_COLUMNS = (STREAM_ID, TIME, BATCH_SEQ, OPERATION, TTL, END_OF_BATCH)
DELETED = "cdc$deleted_"
DELETED_ELEMENTS = "cdc$deleted_elements_"

_RANGE_START = {5: True, 6: False}  # op -> inclusive
_RANGE_END = {7: True, 8: False}
_DELTA_OPS = {1: Op.UPDATE, 2: Op.INSERT, 3: Op.ROW_DELETE, 4: Op.PARTITION_DELETE}
_NOTHING: frozenset[str] = frozenset()


class UndecodableGroup(InvalidRecord):
    """A CDC log group that cdcd cannot turn into events. Never retried as-is; carries the raw
    group so it can be stored for inspection."""

    def __init__(
        self, reason: str, *, table: str, stream_id: bytes, time: uuid.UUID | None, rows: Sequence[Any]
    ) -> None:
        self.reason = reason
        self.table = table
        self.stream_id = stream_id
        self.time = time
        self.rows = [dict(r) for r in rows]
        super().__init__(f"{table}: undecodable CDC group stream={stream_id.hex()} time={time}: {reason}")


def log_column_names(schema: TableSchema) -> set[str]:
    """The columns ``<table>_scylla_cdc_log`` has for this base schema (§1.2)."""
    names = set(META_COLUMNS)
    for c in schema.columns:
        names.add(c.name)
        if c.kind in ("static", "regular"):
            names.add(DELETED + c.name)
            if c.type.is_multicell:
                names.add(DELETED_ELEMENTS + c.name)
    return names


class _ValueCol:
    __slots__ = ("deleted", "deleted_elements", "delta", "elements", "fast", "image", "name", "static")

    def __init__(self, col: Column) -> None:
        self.name = col.name
        self.static = col.kind == "static"
        self.delta = conv.delta_value(col.type)
        self.image = conv.canonical(col.type)
        self.deleted = DELETED + col.name
        self.deleted_elements = DELETED_ELEMENTS + col.name if col.type.is_multicell else None
        self.elements = conv.deleted_elements(col.type) if col.type.is_multicell else None
        # The hot path of a delta row: name, converter (None: the driver's value is canonical
        # as it is, and never becomes None), cdc$deleted_ column, cdc$deleted_elements_ column.
        self.fast = (
            self.name,
            None if conv.is_identity(self.delta) else self.delta,
            self.deleted,
            self.deleted_elements,
            self.elements,
        )


class LogDecoder:
    """Decodes the groups of one table's CDC log. Build once per schema version (``schema`` is the
    BASE table's ``TableSchema``; the log's columns follow from it)."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self.table = schema.qualified
        self._pk = [(c.name, conv.canonical(c.type)) for c in schema.partition_key]
        self._ck = [(c.name, conv.canonical(c.type)) for c in schema.clustering_key]
        # Per-table work done once: key converters that are the identity are skipped (None).
        self._pk_fast = [(n, None if conv.is_identity(c) else c) for n, c in self._pk]
        self._ck_fast = [(n, None if conv.is_identity(c) else c) for n, c in self._ck]
        self._pk_names = tuple(n for n, _ in self._pk)
        self._ck_names = tuple(n for n, _ in self._ck)
        self._cols = [_ValueCol(c) for c in schema.columns if c.kind in ("static", "regular")]
        self._cols_fast = [c.fast for c in self._cols]
        self._has_static = any(c.static for c in self._cols)
        self._full_preimage = schema.cdc.preimage == "full"
        self.log_columns = log_column_names(schema)

    def unknown_columns(self, names: Sequence[str] | set[str]) -> set[str]:
        """Log columns this decoder does not know: the base schema it was built from is outdated."""
        return set(names) - self.log_columns

    # ------------------------------------------------------------------------------------------
    def decode(self, rows: Sequence[Mapping[str, Any]], *, generation: int) -> list[ChangeEvent]:
        """Decode one complete group (rows in any order; sorted by ``cdc$batch_seq_no`` here)."""
        if not rows:
            raise ValueError("decode() needs at least one row")
        first = rows[0]
        stream_id = first.get(STREAM_ID)
        time = first.get(TIME)
        if not isinstance(stream_id, bytes) or not isinstance(time, uuid.UUID):
            raise UndecodableGroup(
                "missing cdc$stream_id or cdc$time", table=self.table, stream_id=b"", time=None, rows=rows
            )
        try:
            if len(rows) > 1:
                rows = sorted(rows, key=lambda r: r.get(BATCH_SEQ) or 0)
            return self._decode(rows, generation, stream_id, time)
        except UndecodableGroup:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise UndecodableGroup(
                f"{type(exc).__name__}: {exc}", table=self.table, stream_id=stream_id, time=time, rows=rows
            ) from exc

    def _fail(self, reason: str, rows: Sequence[Mapping[str, Any]]) -> UndecodableGroup:
        r = rows[0]
        return UndecodableGroup(reason, table=self.table, stream_id=r[STREAM_ID], time=r[TIME], rows=rows)

    def _decode(
        self, rows: Sequence[Mapping[str, Any]], generation: int, stream_id: bytes, time: uuid.UUID
    ) -> list[ChangeEvent]:
        pos = Position(generation=generation, stream_id=stream_id, time=time)
        write_time = timeuuid_to_micros(time)
        table = self.table
        has_ck = bool(self._ck)
        events: list[ChangeEvent] = []
        images: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
        pending_start: tuple[Mapping[str, Any], tuple[Any, ...], bool] | None = None
        for row in rows:
            get = row.get
            s, t = get(STREAM_ID), get(TIME)
            if s != stream_id or (t is not time and t != time):
                raise self._fail("rows of different (stream, time) in one group", rows)
            raw_op = get(OPERATION)
            if not isinstance(raw_op, int):
                raise self._fail(f"cdc$operation is {raw_op!r}", rows)
            seq = int(get(BATCH_SEQ) or 0)
            if pending_start is not None and raw_op not in _RANGE_END:
                raise self._fail(
                    f"range delete start at seq {pending_start[0].get(BATCH_SEQ)} has no end", rows
                )
            key = self._pk_dict(get, rows)
            if raw_op in (1, 2):
                static = False
                if has_ck:
                    ck = self._ck_values(get)
                    nulls = ck.count(None)
                    if nulls == len(ck):
                        if raw_op == 2:
                            raise self._fail("insert with all clustering columns null", rows)
                        static = True
                    elif nulls:
                        raise self._fail("row change with a partially null clustering key", rows)
                    else:
                        for (name, _), v in zip(self._ck_fast, ck, strict=True):
                            key[name] = v
                values, deleted, elements = self._delta_values(get)
                events.append(
                    ChangeEvent(
                        table=table, pos=pos, batch_seq=seq, op=_DELTA_OPS[raw_op], write_time_us=write_time,
                        key=key, static=static, values=values, deleted=deleted, deleted_elements=elements,
                        ttl=get(TTL),
                    )
                )  # fmt: skip
            elif raw_op in (3, -3):
                ck = self._ck_values(get)
                if None in ck:
                    raise self._fail("row delete with a null clustering column", rows)
                for (name, _), v in zip(self._ck_fast, ck, strict=True):
                    key[name] = v
                events.append(
                    ChangeEvent(
                        table=table, pos=pos, batch_seq=seq, op=Op.ROW_DELETE, write_time_us=write_time, key=key
                    )
                )  # fmt: skip
            elif raw_op in (0, 9):
                pk = tuple(key.values())
                imkey = self._image_key(row, pk, rows)
                images.append((raw_op, imkey, self._image(row, raw_op, imkey, pk)))
            elif raw_op in (4, -4):
                events.append(
                    ChangeEvent(
                        table=table, pos=pos, batch_seq=seq, op=Op.PARTITION_DELETE, write_time_us=write_time,
                        key=key,
                    )
                )  # fmt: skip
            elif raw_op in _RANGE_START:
                pending_start = (row, self._prefix(row, rows), _RANGE_START[raw_op])
            elif raw_op in _RANGE_END:
                if pending_start is None:
                    raise self._fail(f"range delete end at seq {seq} without a start", rows)
                start_row, start, start_incl = pending_start
                pending_start = None
                rng = RangeBound(
                    start=start,
                    start_inclusive=start_incl,
                    end=self._prefix(row, rows),
                    end_inclusive=_RANGE_END[raw_op],
                )
                events.append(
                    ChangeEvent(
                        table=table, pos=pos, batch_seq=int(start_row.get(BATCH_SEQ) or 0),
                        op=Op.RANGE_DELETE, write_time_us=write_time, key=key, range=rng,
                    )
                )  # fmt: skip
            else:
                raise self._fail(f"unknown cdc$operation {raw_op}", rows)
        if pending_start is not None:
            raise self._fail("range delete start without an end", rows)
        if images:
            return self._attach_images(events, images)
        return events

    # ------------------------------------------------------------------------------------------
    def _pk_dict(self, get: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The partition key of a row (canonical values); raises on a null column."""
        key: dict[str, Any] = {}
        for name, c in self._pk_fast:
            v = get(name)
            if v is None:
                raise self._fail(f"partition key column {name!r} is null", rows)
            key[name] = v if c is None else c(v)
        return key

    def _ck_values(self, get: Any) -> list[Any]:
        out = []
        for name, c in self._ck_fast:
            v = get(name)
            out.append(v if c is None or v is None else c(v))
        return out

    def _key_dict(self, pk: tuple[Any, ...], ck: Sequence[Any]) -> dict[str, Any]:
        key = dict(zip(self._pk_names, pk, strict=True))
        key.update(zip(self._ck_names, ck, strict=False))
        return key

    def _imkey_of(self, ev: ChangeEvent) -> tuple[Any, ...] | None:
        """The (primary key) identity an image of ``ev``'s row carries, None for events no image
        attaches to (range deletes; partition deletes of tables with clustering columns)."""
        key = ev.key
        pk = tuple(key[n] for n in self._pk_names)
        op = ev.op
        if op is Op.RANGE_DELETE or (op is Op.PARTITION_DELETE and self._ck):
            return None
        if op is Op.PARTITION_DELETE:
            return ("R", pk, ())
        if ev.static:
            return ("S", pk)
        return ("R", pk, tuple(key[n] for n in self._ck_names))

    def _prefix(self, row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
        """Clustering prefix of a range bound: leading non-null values; nulls only at the end."""
        ck = self._ck_values(row.get)
        n = 0
        while n < len(ck) and ck[n] is not None:
            n += 1
        if any(v is not None for v in ck[n:]):
            raise self._fail("range bound with a null inside its clustering prefix", rows)
        return tuple(ck[:n])

    def _delta_values(self, get: Any) -> tuple[dict[str, Any], frozenset[str], dict[str, list[Any]]]:
        values: dict[str, Any] = {}
        deleted: list[str] | None = None
        elements: dict[str, list[Any]] = {}
        for name, delta, deleted_col, elements_col, elements_conv in self._cols_fast:
            v = get(name)
            if v is not None:
                if delta is None:
                    values[name] = v
                else:
                    cv = delta(v)
                    if cv is not None:
                        values[name] = cv
            if get(deleted_col) is True:
                if deleted is None:
                    deleted = [name]
                else:
                    deleted.append(name)
            if elements_col is not None and elements_conv is not None:
                de = get(elements_col)
                if de is not None:
                    items = elements_conv(de)
                    if items:
                        elements[name] = items
        return values, _NOTHING if deleted is None else frozenset(deleted), elements

    def _image_key(
        self, row: Mapping[str, Any], pk: tuple[Any, ...], rows: Sequence[Mapping[str, Any]]
    ) -> tuple[Any, ...]:
        ck = tuple(self._ck_values(row.get))
        if self._ck and all(v is None for v in ck):
            return ("S", pk)
        if any(v is None for v in ck):
            raise self._fail("image row with a partially null clustering key", rows)
        return ("R", pk, ck)

    def _image(
        self, row: Mapping[str, Any], op: int, imkey: tuple[Any, ...], pk: tuple[Any, ...]
    ) -> dict[str, Any]:
        static = imkey[0] == "S"
        ck: tuple[Any, ...] = () if static else imkey[2]
        out = self._key_dict(pk, ck)
        include_all = op == 9 or self._full_preimage
        for c in self._cols:
            v = row.get(c.name)
            relevant = c.static == static
            if v is not None:
                if relevant or not static:  # a row image may also carry the partition's static values
                    out[c.name] = c.image(v)
            elif relevant and (include_all or row.get(c.deleted) is True):
                out[c.name] = None
        return out

    def _attach_images(
        self, events: list[ChangeEvent], images: list[tuple[int, tuple[Any, ...], dict[str, Any]]]
    ) -> list[ChangeEvent]:
        """Images go to the delta of their primary key: a preimage to the first, a postimage to
        the last (groups with images only; the others never get here)."""
        imkeys = [self._imkey_of(ev) for ev in events]
        pre: dict[int, dict[str, Any]] = {}
        post: dict[int, dict[str, Any]] = {}
        for op, imkey, image in images:
            matches = [i for i, k in enumerate(imkeys) if k == imkey]
            if not matches:
                continue  # an image without a delta of its key (cannot happen in Scylla's layouts)
            if op == 0:
                pre.setdefault(matches[0], image)
            else:
                post[matches[-1]] = image
        return [
            msgspec.structs.replace(ev, preimage=pre.get(i), postimage=post.get(i))
            if i in pre or i in post
            else ev
            for i, ev in enumerate(events)
        ]
