"""Positions a destination records beside its data, so cdcd can resume when Redis lost its state.

Every sink that records them (PostgreSQL, TimescaleDB, ClickHouse) keeps one offsets table per
schema (ClickHouse: database) of the tables it replicates: ``[destinations.<name>]
offsets_table`` (default ``cdcd_offsets``) in ``offsets_schema`` (default: the schema of each
replicated table). One row per (destination, source table, generation, stream):

============  ===========================================================================
column        meaning
============  ===========================================================================
destination   the ``[destinations.<name>]`` key (several cdcd destinations may share a database)
source_table  ``keyspace.table`` in Scylla
generation    CDC generation start, ms since the epoch
stream_id     ``cdc$stream_id`` (16 bytes; hex text in ClickHouse)
position      ``cdc$time`` of the last CDC log group applied for that stream (a timeuuid)
position_us   its timestamp in µs: the order of positions (and ClickHouse's row version)
start_ms      where this group's streams without a position start (the start floor, ms)
updated_at    when the row was written (information only)
============  ===========================================================================

One more row per (destination, source table), written when cdcd first sets the table up, before
anything is applied: generation 0, an empty ``stream_id``, ``start_ms`` (and ``position``) at the
start floor (``floor_applied``). So the floor survives Redis losing its state even before the
first change was written; rows of real generations take precedence over it.

A row is written in the same transaction as the data it covers (PostgreSQL), or by an insert
after the data's inserts under a token derived from the same batch (ClickHouse: a retried batch
records nothing twice, and a crash between the two inserts leaves the offsets behind the data,
never ahead). A position never moves backwards.

``Applied`` is what a sink is handed to record: positions of ONE generation of one group, and the
start floor. The protocol ``RecordsApplied`` is what ``cdcd.flow.applied`` needs of such a sink.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import msgspec

from cdcd.events import Position, timeuuid_to_micros

__all__ = [
    "DEFAULT_TABLE", "Applied", "PerMapping", "RecordsApplied", "floor_applied", "newest", "offsets_location",
    "rows_of",
]  # fmt: skip

DEFAULT_TABLE = "cdcd_offsets"
T = TypeVar("T")


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """Positions to record with a write: stream -> last applied position, all of one generation."""

    positions: dict[bytes, Position]
    start_ms: int  # start floor of the group's streams (max(generation start, floor)), ms

    @property
    def generation(self) -> int:
        gens = {p.generation for p in self.positions.values()}
        if len(gens) != 1:
            raise ValueError(f"positions to record span generations {sorted(gens)}; expected one")
        return gens.pop()


def floor_applied(start_ms: int) -> Applied:
    """The start-floor row (see the module docstring) as an ``Applied`` to record."""
    from cdcd.scylla.windows import min_timeuuid  # here: cdcd.scylla loads the driver

    floor = Position(generation=0, stream_id=b"", time=min_timeuuid(start_ms * 1000))
    return Applied(positions={b"": floor}, start_ms=start_ms)


def rows_of(applied: Applied) -> list[tuple[bytes, Any, int]]:
    """(stream id, cdc$time, µs) per stream, checked: the key must be the position's stream."""
    out = []
    for stream, pos in applied.positions.items():
        if pos.stream_id != stream:
            raise ValueError(f"position of stream {pos.stream_id.hex()} filed under {stream.hex()}")
        out.append((stream, pos.time, timeuuid_to_micros(pos.time)))
    return out


def offsets_location(config: Any, target_schema: str) -> tuple[str, str]:
    """(schema or database, table) of the offsets table serving a table replicated into
    ``target_schema``: ``offsets_schema`` (default: that schema) and ``offsets_table``."""
    schema = getattr(config, "offsets_schema", None) or target_schema
    table = getattr(config, "offsets_table", None) or DEFAULT_TABLE
    return str(schema), str(table)


@runtime_checkable
class RecordsApplied(Protocol):
    """A sink that records applied positions (``cdcd.sinks.postgres``, ``.timescale``,
    ``.clickhouse``). ``mapping`` is the ``TableMapping`` of ``ensure_table``, which creates the
    offsets table. Every method raises ``SinkUnavailable`` while the destination is down."""

    name: str

    async def write(self, mapping: Any, events: Sequence[Any], applied: Applied | None = None) -> Any:
        """``Sink.write``, recording ``applied`` with the data (atomically, or after it)."""
        ...

    async def load_applied(
        self, mapping: Any, generation: int, streams: Sequence[bytes]
    ) -> dict[bytes, Position]:
        """The recorded positions of these streams (absent: nothing recorded)."""
        ...

    async def record_applied(self, mapping: Any, applied: Applied) -> None:
        """Record positions alone (work resolved without a data write: rejected or filtered
        events, empty windows)."""
        ...

    async def applied_start(self, mapping: Any) -> int | None:
        """``start_ms`` of the newest generation recorded for the mapping's source table (the
        floor to restore when Redis lost it); None when nothing is recorded."""
        ...


class PerMapping(Generic[T]):
    """One ``make(mapping)`` per (source, target) mapping, made on first use (a sink's offsets
    statements per mapping)."""

    def __init__(self, make: Callable[[Any], T]) -> None:
        self._make = make
        self._made: dict[tuple[str, str], T] = {}

    def __call__(self, mapping: Any) -> T:
        key = (mapping.source, mapping.target)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(mapping)
        return made


def newest(a: Mapping[bytes, Position], b: Mapping[bytes, Position]) -> dict[bytes, Position]:
    """Per stream, the later of two position maps (helper for callers merging records)."""
    out = dict(a)
    for s, p in b.items():
        q = out.get(s)
        if q is None or q.sort_key() < p.sort_key():
            out[s] = p
    return out
