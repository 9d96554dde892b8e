"""What the ClickHouse sink puts on the wire besides SQL text: insert blocks (column-oriented),
key lists as server-side parameter values, insert deduplication tokens, error reasons."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from cdcd.events import ChangeEvent
from cdcd.sinks import TableMapping

__all__ = ["Block", "batch_token", "error_reason", "key_param", "micros_to_dt", "norm_type"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Block:
    """One insert: a physical table, its columns (names, types, column-oriented data) and, per
    row, the indexes of the batch events that produced it."""

    def __init__(
        self, part: str, table: str, types: dict[str, str], data: list[list[Any]], events: list[list[int]]
    ) -> None:
        self.part = part
        self.table = table
        self.names = list(types)
        self.types = [types[n] for n in self.names]
        self.data = data
        self.events = events
        self.records: list[dict[str, Any]] | None = None  # row dicts, when built from records

    @classmethod
    def from_records(
        cls,
        part: str,
        table: str,
        types: dict[str, str],
        records: list[dict[str, Any]],
        events: list[list[int]],
    ) -> Block:
        block = cls(part, table, types, [[r[n] for r in records] for n in types], events)
        block.records = records
        return block

    @property
    def nrows(self) -> int:
        return len(self.events)

    def columns(self, rows: Sequence[int] | None = None) -> list[list[Any]]:
        if rows is None:
            return self.data
        return [[col[i] for i in rows] for col in self.data]


def micros_to_dt(us: int | None) -> dt.datetime | None:
    return None if us is None else _EPOCH + dt.timedelta(microseconds=us)


class _Bound:
    """A server-side parameter value already in ClickHouse's text form: clickhouse-connect sends
    ``str(value)`` for types it does not know, and the server parses it as the declared type."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


_ESCAPE = str.maketrans({c: "\\" + c for c in ("\\", "'", "`", "\t", "\n")})  # as clickhouse-connect


def _lit(v: Any) -> str:
    t = type(v)
    if t is int:
        return str(v)
    if t is str:
        return "'" + str.translate(v, _ESCAPE) + "'"
    if t is uuid.UUID:
        return f"'{v}'"
    if t is dt.datetime and v.tzinfo is dt.UTC:
        # A timestamp key (DateTime64(3, 'UTC')): the text clickhouse-connect's DT64Param renders.
        return "'" + dt.datetime.strftime(v, "%Y-%m-%d %H:%M:%S.%f") + "'"
    raise TypeError  # anything else: clickhouse-connect's own formatter


def key_param(keys: list[tuple[Any, ...]], types: Sequence[str]) -> Any:
    """A key list as a server-side parameter value. Integer, text, UUID and timestamp keys are
    written in ClickHouse's text form directly (clickhouse-connect's generic formatter escapes
    strings char by char and promotes every timestamp to a DT64Param: ~10-20 µs per key); other
    key types (dates, blobs, tuples, ...) go through it."""
    try:
        if len(types) == 1:
            return _Bound("[" + ",".join([_lit(k[0]) for k in keys]) + "]")
        return _Bound("[" + ",".join(["(" + ",".join(map(_lit, k)) + ")" for k in keys]) + "]")
    except TypeError:
        return [k[0] for k in keys] if len(types) == 1 else keys


def error_reason(exc: BaseException) -> str:
    text = str(exc).split("(version", 1)[0].strip()
    return f"{type(exc).__name__}: {text[:500]}"


def norm_type(t: str) -> str:
    return t.replace("`", "").replace(" ", "")


def batch_token(mapping: TableMapping, events: Sequence[ChangeEvent]) -> str:
    """Deterministic id of a batch: its source and target, event count and every CDC position
    (stream id, cdc$time, batch_seq), so the same batch retried gets the same token."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{mapping.source}\0{mapping.target}\0{len(events)}\0".encode())
    for ev in events:
        h.update(ev.pos.stream_id)
        h.update(ev.pos.time.bytes)
        h.update(ev.batch_seq.to_bytes(4, "big", signed=True))
    first, last = events[0], events[-1]
    return f"cdcd:{first.pos.stream_id.hex()}:{first.pos.time}:{last.pos.time}:{len(events)}:{h.hexdigest()}"
