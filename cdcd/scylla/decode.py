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
    __slots__ = ("deleted", "deleted_elements", "delta", "elements", "image", "name", "static")

    def __init__(self, col: Column) -> None:
        self.name = col.name
        self.static = col.kind == "static"
        self.delta = conv.delta_value(col.type)
        self.image = conv.canonical(col.type)
        self.deleted = DELETED + col.name
        self.deleted_elements = DELETED_ELEMENTS + col.name if col.type.is_multicell else None
        self.elements = conv.deleted_elements(col.type) if col.type.is_multicell else None


class _Event:
    """A delta under construction (mutable; frozen into ChangeEvent at the end)."""

    __slots__ = ("args", "imkey", "post", "pre")

    def __init__(self, imkey: tuple[Any, ...] | None, args: dict[str, Any]) -> None:
        self.imkey = imkey
        self.args = args
        self.pre: dict[str, Any] | None = None
        self.post: dict[str, Any] | None = None


class LogDecoder:
    """Decodes the groups of one table's CDC log. Build once per schema version (``schema`` is the
    BASE table's ``TableSchema``; the log's columns follow from it)."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self.table = schema.qualified
        self._pk = [(c.name, conv.canonical(c.type)) for c in schema.partition_key]
        self._ck = [(c.name, conv.canonical(c.type)) for c in schema.clustering_key]
        self._cols = [_ValueCol(c) for c in schema.columns if c.kind in ("static", "regular")]
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
            return self._decode(
                sorted(rows, key=lambda r: r.get(BATCH_SEQ) or 0), generation, stream_id, time
            )
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
        events: list[_Event] = []
        images: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
        pending_start: tuple[Mapping[str, Any], tuple[Any, ...], bool] | None = None
        for row in rows:
            if row.get(STREAM_ID) != stream_id or row.get(TIME) != time:
                raise self._fail("rows of different (stream, time) in one group", rows)
            raw_op = row.get(OPERATION)
            if not isinstance(raw_op, int):
                raise self._fail(f"cdc$operation is {raw_op!r}", rows)
            seq = int(row.get(BATCH_SEQ) or 0)
            if pending_start is not None and raw_op not in _RANGE_END:
                raise self._fail(
                    f"range delete start at seq {pending_start[0].get(BATCH_SEQ)} has no end", rows
                )
            pk = self._key(row, self._pk, rows, "partition key")
            common = {"table": self.table, "pos": pos, "batch_seq": seq, "write_time_us": write_time}
            if raw_op in (0, 9):
                imkey = self._image_key(row, pk, rows)
                images.append((raw_op, imkey, self._image(row, raw_op, imkey, pk)))
            elif raw_op in (1, 2):
                ck, static = self._row_ck(row, raw_op, rows)
                args = dict(common, op=_DELTA_OPS[raw_op], key=self._key_dict(pk, ck), static=static)
                self._delta_values(row, args, static)
                args["ttl"] = row.get(TTL)
                events.append(_Event(("S", pk) if static else ("R", pk, ck), args))
            elif raw_op in (3, -3):
                ck = self._ck_values(row)
                if any(v is None for v in ck):
                    raise self._fail("row delete with a null clustering column", rows)
                args = dict(common, op=Op.ROW_DELETE, key=self._key_dict(pk, ck))
                events.append(_Event(("R", pk, ck), args))
            elif raw_op in (4, -4):
                args = dict(common, op=Op.PARTITION_DELETE, key=self._key_dict(pk, ()))
                # Tables without clustering key have a (preimage) row per partition.
                events.append(_Event(("R", pk, ()) if not self._ck else None, args))
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
                args = dict(common, op=Op.RANGE_DELETE, key=self._key_dict(pk, ()), range=rng)
                args["batch_seq"] = int(start_row.get(BATCH_SEQ) or 0)
                events.append(_Event(None, args))
            else:
                raise self._fail(f"unknown cdc$operation {raw_op}", rows)
        if pending_start is not None:
            raise self._fail("range delete start without an end", rows)
        self._attach_images(events, images)
        out = []
        for ev in events:
            if ev.pre is not None:
                ev.args["preimage"] = ev.pre
            if ev.post is not None:
                ev.args["postimage"] = ev.post
            out.append(ChangeEvent(**ev.args))
        return out

    # ------------------------------------------------------------------------------------------
    def _key(
        self,
        row: Mapping[str, Any],
        cols: list[tuple[str, conv.Converter]],
        rows: Sequence[Mapping[str, Any]],
        what: str,
    ) -> tuple[Any, ...]:
        out = []
        for name, c in cols:
            v = row.get(name)
            if v is None:
                raise self._fail(f"{what} column {name!r} is null", rows)
            out.append(c(v))
        return tuple(out)

    def _ck_values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(c(row.get(name)) for name, c in self._ck)

    def _key_dict(self, pk: tuple[Any, ...], ck: tuple[Any, ...]) -> dict[str, Any]:
        key = {name: v for (name, _), v in zip(self._pk, pk, strict=True)}
        key.update({name: v for (name, _), v in zip(self._ck, ck, strict=False)})
        return key

    def _row_ck(
        self, row: Mapping[str, Any], op: int, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[tuple[Any, ...], bool]:
        """Clustering values of an update/insert/image row, and whether it is a static-row change."""
        ck = self._ck_values(row)
        if not self._ck:
            return (), False
        nulls = sum(v is None for v in ck)
        if nulls == len(ck):
            if op == 2:
                raise self._fail("insert with all clustering columns null", rows)
            return (), True
        if nulls:
            raise self._fail("row change with a partially null clustering key", rows)
        return ck, False

    def _prefix(self, row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
        """Clustering prefix of a range bound: leading non-null values; nulls only at the end."""
        ck = self._ck_values(row)
        n = 0
        while n < len(ck) and ck[n] is not None:
            n += 1
        if any(v is not None for v in ck[n:]):
            raise self._fail("range bound with a null inside its clustering prefix", rows)
        return ck[:n]

    def _delta_values(self, row: Mapping[str, Any], args: dict[str, Any], static: bool) -> None:
        values: dict[str, Any] = {}
        deleted: set[str] = set()
        elements: dict[str, list[Any]] = {}
        for c in self._cols:
            v = row.get(c.name)
            if v is not None:
                cv = c.delta(v)
                if cv is not None:
                    values[c.name] = cv
            if row.get(c.deleted) is True:
                deleted.add(c.name)
            if c.deleted_elements is not None and c.elements is not None:
                de = row.get(c.deleted_elements)
                if de is not None:
                    items = c.elements(de)
                    if items:
                        elements[c.name] = items
        args["values"] = values
        args["deleted"] = frozenset(deleted)
        args["deleted_elements"] = elements

    def _image_key(
        self, row: Mapping[str, Any], pk: tuple[Any, ...], rows: Sequence[Mapping[str, Any]]
    ) -> tuple[Any, ...]:
        ck = self._ck_values(row)
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

    @staticmethod
    def _attach_images(
        events: list[_Event], images: list[tuple[int, tuple[Any, ...], dict[str, Any]]]
    ) -> None:
        for op, imkey, image in images:
            matches = [ev for ev in events if ev.imkey == imkey]
            if not matches:
                continue  # an image without a delta of its key (cannot happen in Scylla's layouts)
            if op == 0:
                target = matches[0]
                if target.pre is None:
                    target.pre = image
            else:
                matches[-1].post = image
