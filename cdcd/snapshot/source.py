"""Reading a source table by token ranges, with each cell's write time, as ``ChangeEvent``s.

* ``token_ranges(n)``: the Murmur3 token ring cut into ``n`` contiguous ranges ``[lo, hi]``.
* ``TableScan``: ``SELECT pk.., ck.., c, writetime(c), .. , token(pk..) FROM ks.t WHERE
  token(pk..) >= ? AND token(pk..) <= ?``, paged, under the ``[source]`` read caps
  (``ReadLimiter``).
* ``row_events(row)``: one source row -> the events a CDC log would carry for it: its cells
  grouped by write time, oldest first (the first group an ``INSERT``, which sets the row marker, the
  others ``UPDATE``s), each event carrying its group's write time, so the destination's version
  guard decides group by group exactly as for streamed changes. Columns without a cell are
  written as null by the newest group (a repair must clear a value the source does not hold).
  Non-frozen sets, maps and UDTs are written whole (clear, then add); non-frozen collections have
  no ``writetime()`` in CQL, so they take the row's newest atomic write time (the read time when
  the row has no atomic cell).

Not supported (refused by ``check_supported`` with the column named): static columns and
non-frozen lists (a ``SELECT`` does not return the cell timeuuids a list delta addresses).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from cassandra.metadata import Murmur3Token

from cdcd.errors import ConfigError
from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import Column, TableSchema
from cdcd.scylla.limits import ReadSlots
from cdcd.scylla.session import ScyllaSession
from cdcd.scylla.values import canonical

__all__ = [
    "MAX_TOKEN",
    "MIN_TOKEN",
    "SNAPSHOT_POSITION",
    "SourceRow",
    "TableScan",
    "check_supported",
    "snapshot_position",
    "token_ranges",
]

MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1
# Snapshot events do not come from a CDC stream; their positions are never checkpointed.
SNAPSHOT_POSITION = Position(generation=0, stream_id=b"\x00" * 16, time=uuid.UUID(int=0))
_UUID_EPOCH = 0x01B21DD213814000  # 100-ns intervals between 1582-10-15 and 1970-01-01


def snapshot_position(key: dict[str, Any], write_time_us: int) -> Position:
    """A position that names the change: the stream id is a hash of the key, the time a timeuuid
    of the write time. ClickHouse derives the deduplication token of an insert from the
    positions of its events (``batch_token``): with one shared position, different snapshot
    batches of the same size would look like retries of one batch and be dropped."""
    digest = hashlib.blake2b(repr(sorted(key.items())).encode(), digest_size=24).digest()
    ticks = write_time_us * 10 + _UUID_EPOCH
    time_low, time_mid, time_hi = ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, (ticks >> 48) & 0x0FFF
    tail = int.from_bytes(digest[16:], "big") & 0x3FFFFFFFFFFFFFFF | 0x8000000000000000  # variant
    value = time_low << 96 | time_mid << 80 | (0x1000 | time_hi) << 64 | tail
    return Position(generation=0, stream_id=digest[:16], time=uuid.UUID(int=value))


def token_ranges(n: int) -> list[tuple[int, int]]:
    """The ring cut into ``n`` contiguous ranges ``[lo, hi]`` (both inclusive)."""
    if n < 1:
        raise ValueError(f"the number of token ranges must be >= 1, got {n}")
    span = MAX_TOKEN - MIN_TOKEN + 1
    starts = [MIN_TOKEN + span * i // n for i in range(n)]
    return [(starts[i], starts[i + 1] - 1 if i + 1 < n else MAX_TOKEN) for i in range(n)]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_supported(schema: TableSchema, source: str) -> None:
    """Raise ``ConfigError`` (naming the column) for what snapshots cannot read faithfully."""
    for c in schema.columns:
        if c.kind == "static":
            raise ConfigError(
                f"{source}: static column {c.name!r}: snapshot and reconcile do not support "
                "tables with static columns",
                key="tables.source",
            )
        if c.type.name == "list" and c.type.is_multicell:
            raise ConfigError(
                f"{source}: column {c.name!r} is a non-frozen list, which snapshot and reconcile "
                "cannot copy (a SELECT does not return the cell timeuuids its changes address)",
                key="tables.source",
            )


class SourceRow:
    """One row read from the source: canonical key and values, and per-column write times."""

    __slots__ = ("key", "multicell", "token", "values", "write_times")

    def __init__(
        self,
        key: dict[str, Any],
        values: dict[str, Any],
        write_times: dict[str, int | None],
        token: int,
        multicell: frozenset[str] = frozenset(),
    ) -> None:
        self.key = key
        self.values = values  # every non-key column (None: no cell)
        self.write_times = write_times  # column -> µs of its cell (None: no cell, or multicell)
        self.token = token
        self.multicell = multicell  # non-frozen collection / UDT columns (no writetime())

    def newest(self) -> int:
        """The row's newest atomic cell write time (0 when it has none)."""
        return max((w for w in self.write_times.values() if w is not None), default=0)

    def events(self, table: str, *, seq: int = 0, read_time_us: int | None = None) -> list[ChangeEvent]:
        """The events that recreate this row (see the module docstring), oldest first."""
        newest = self.newest() or read_time_us or int(time.time() * 1e6)
        values: dict[int, dict[str, Any]] = {}
        cleared: dict[int, set[str]] = {}
        for name, value in self.values.items():
            wt = self.write_times.get(name)
            at = newest if value is None or wt is None else wt
            group = values.setdefault(at, {})
            if name in self.multicell:
                cleared.setdefault(at, set()).add(name)  # overwrite: clear, then add the cells
                if value is not None:
                    group[name] = value
            else:
                group[name] = value
        if not values:
            values[newest] = {}
        return [
            ChangeEvent(
                table=table,
                pos=snapshot_position(self.key, at),
                batch_seq=seq,
                op=Op.INSERT if i == 0 else Op.UPDATE,
                write_time_us=at,
                key=dict(self.key),
                values=values[at],
                deleted=frozenset(cleared.get(at, ())),
            )
            for i, at in enumerate(sorted(values))
        ]

    def full_event(self, table: str, write_time_us: int) -> ChangeEvent:
        """The whole row as ONE change at ``write_time_us`` (repairs: every column, nulls included)."""
        values = {k: v for k, v in self.values.items() if v is not None or k not in self.multicell}
        return ChangeEvent(
            table=table, pos=snapshot_position(self.key, write_time_us), batch_seq=0, op=Op.INSERT,
            write_time_us=write_time_us,
            key=dict(self.key), values=values, deleted=self.multicell,
        )  # fmt: skip


class TableScan:
    """Paged token-range reads of one table with ``writetime()`` per atomic column."""

    def __init__(
        self,
        session: ScyllaSession,
        schema: TableSchema,
        *,
        fetch_size: int = 1000,
        limiter: ReadSlots | None = None,
    ) -> None:
        self.session = session
        self.schema = schema
        self.fetch_size = fetch_size
        self.limiter = limiter
        self.pk = [c.name for c in schema.partition_key]
        self.key_columns = list(schema.primary_key)
        self.value_columns = [c for c in schema.columns if c.kind == "regular"]
        self.multicell = frozenset(c.name for c in self.value_columns if c.type.is_multicell)
        self._conv = {c.name: canonical(c.type) for c in schema.columns}
        table = f"{quote(schema.keyspace)}.{quote(schema.name)}"
        token = f"token({', '.join(quote(n) for n in self.pk)})"
        select = [quote(c.name) for c in self.key_columns]
        for i, c in enumerate(self.value_columns):
            select.append(quote(c.name))
            if c.name not in self.multicell:
                select.append(f"writetime({quote(c.name)}) AS wt{i}")
        select.append(f"{token} AS tok")
        self._select = ", ".join(select)
        self._range_query = f"SELECT {self._select} FROM {table} WHERE {token} >= ? AND {token} <= ?"
        keys = ", ".join(quote(c.name) for c in self.key_columns)
        self._keys_query = f"SELECT {keys} FROM {table} WHERE {token} >= ? AND {token} <= ?"
        where = " AND ".join(f"{quote(c.name)} = ?" for c in self.key_columns)
        self._key_query = f"SELECT {self._select} FROM {table} WHERE {where}"
        self._pk_query = f"SELECT * FROM {table} WHERE {' AND '.join(f'{quote(n)} = ?' for n in self.pk)}"

    def _row(self, raw: dict[str, Any]) -> SourceRow:
        conv = self._conv
        key = {c.name: conv[c.name](raw[c.name]) for c in self.key_columns}
        values: dict[str, Any] = {}
        wts: dict[str, int | None] = {}
        for i, c in enumerate(self.value_columns):
            v = raw[c.name]
            values[c.name] = None if v is None else conv[c.name](v)
            wts[c.name] = None if c.name in self.multicell else raw[f"wt{i}"]
        return SourceRow(key, values, wts, int(raw["tok"]), self.multicell)

    async def scan(self, lo: int, hi: int) -> AsyncIterator[list[SourceRow]]:
        """The rows with ``lo <= token <= hi``, page by page."""
        stmt = await self.session.prepare(self._range_query)
        async for rows in self.session.pages(
            stmt, (lo, hi), fetch_size=self.fetch_size, limiter=self.limiter
        ):
            if self.limiter is not None:
                self.limiter.spend(len(rows))
            yield [self._row(r) for r in rows]

    async def keys(self, lo: int, hi: int) -> AsyncIterator[list[dict[str, Any]]]:
        """The primary keys (canonical) of the rows with ``lo <= token <= hi``, page by page."""
        stmt = await self.session.prepare(self._keys_query)
        async for rows in self.session.pages(
            stmt, (lo, hi), fetch_size=self.fetch_size, limiter=self.limiter
        ):
            if self.limiter is not None:
                self.limiter.spend(len(rows))
            conv = self._conv
            yield [{c.name: conv[c.name](r[c.name]) for c in self.key_columns} for r in rows]

    async def get(self, key: dict[str, Any]) -> SourceRow | None:
        """The current row of ``key`` (canonical values), or None when it does not exist."""
        stmt = await self.session.prepare(self._key_query)
        rows = await self.session.execute(stmt, [key[c.name] for c in self.key_columns])
        return self._row(rows[0]) if rows else None

    async def token_of(self, key: dict[str, Any]) -> int:
        """The Murmur3 token of ``key``'s partition, computed by the driver (no round trip)."""
        stmt = await self.session.prepare(self._pk_query)
        bound = stmt.bind([key[n] for n in self.pk])
        return int(Murmur3Token.from_key(bound.routing_key).value)


def key_tuple(key: dict[str, Any], columns: Sequence[Column]) -> tuple[Any, ...]:
    return tuple(key[c.name] for c in columns)
