"""CDC generations (stream sets) and stream groups (scylla-cdc.md §4.4, §4.5, §5).

Vnode keyspaces: generations are the rows of ``system_distributed.cdc_generation_timestamps``
(``key = 'timestamps'``); a generation's streams are the rows of
``system_distributed.cdc_streams_descriptions_v2 WHERE time = ?``. One description row (one token
range, i.e. one vnode with one stream per shard) is one ``StreamGroup``: its streams live on the
same replicas and are read with one ``IN`` query.

Tablet keyspaces (detected by ``system_schema.scylla_keyspaces.initial_tablets``): stream sets
come from ``system.cdc_timestamps`` / ``system.cdc_streams`` (``stream_state = 0``: the current
set at that timestamp) and are treated exactly like generations; streams are grouped in token
order, ``tablet_group_size`` per group.

Generation *i* operates on ``[start_i, start_{i+1})``; a group's ``end`` is the next generation's
start, ``None`` while it is the newest. The ``expired`` column is never trusted (Scylla never
writes it); generations that ended before ``now - ttl`` are skipped (their log rows are gone).
A generation whose stream list is still empty (``scylla-cdc-java#144``) is logged and left out;
the next ``groups()`` call tries again.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from cdcd.scylla.session import ScyllaSession

__all__ = ["StreamDiscovery", "StreamGroup", "start_floor_ms", "to_ms"]

log = logging.getLogger(__name__)

VNODE_TIMESTAMPS = "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'"
VNODE_STREAMS = "SELECT range_end, streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = ?"
TABLET_TIMESTAMPS = "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = ? AND table_name = ?"
TABLET_STREAMS = (
    "SELECT stream_id FROM system.cdc_streams WHERE keyspace_name = ? AND table_name = ? "
    "AND timestamp = ? AND stream_state = 0"
)
USES_TABLETS = "SELECT initial_tablets FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?"


class StreamGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Streams of one table read together by one ``GroupReader``.

    ``generation``/``end`` are ms since the epoch; ``end`` is the next generation's start (None
    while this generation is the newest). ``key`` is stable across restarts: ``"<gen>:<index>"``
    (index = description row in token order; for tablets, the chunk index).
    """

    table: str  # "keyspace.table" (the base table)
    generation: int
    end: int | None
    streams: tuple[bytes, ...]
    key: str


def to_ms(v: Any) -> int:
    """A ``timestamp`` value as the driver returns it (naive UTC datetime, or int ms) -> ms."""
    if isinstance(v, datetime.datetime):
        dt: datetime.datetime = v if v.tzinfo is None else v.astimezone(datetime.UTC).replace(tzinfo=None)
        seconds: int = calendar.timegm(dt.utctimetuple())
        return seconds * 1000 + dt.microsecond // 1000
    if isinstance(v, int):
        return v
    raise TypeError(f"not a timestamp: {v!r}")


def start_floor_ms(start: Literal["now", "earliest"] | datetime.datetime | int, now_ms: int) -> int:
    """Where reading starts for streams without a saved position: ``"now"`` (R-03), ``"earliest"``
    (0: the oldest generation still within the ttl), an aware datetime or ms since the epoch."""
    if start == "now":
        return now_ms
    if start == "earliest":
        return 0
    if isinstance(start, datetime.datetime):
        if start.tzinfo is None:
            raise ValueError(f"start time {start.isoformat()} must carry a time zone")
        return int(start.timestamp() * 1000)
    if isinstance(start, int):
        return start
    raise ValueError(f"start must be 'now', 'earliest', a datetime or ms; got {start!r}")


class StreamDiscovery:
    """Finds generations and stream groups for CDC tables. Safe to share between readers: the
    generation list is cached for ``cache_s`` seconds so many readers polling for "the next
    generation" cost one query."""

    def __init__(
        self,
        session: ScyllaSession,
        *,
        tablet_group_size: int = 8,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tablet_group_size < 1:
            raise ValueError("tablet_group_size must be >= 1")
        self.session = session
        self.tablet_group_size = tablet_group_size
        self.cache_s = cache_s
        self.clock = clock
        self._tablets: dict[str, bool] = {}
        self._cache: dict[str, tuple[float, list[int]]] = {}
        self._lock = asyncio.Lock()

    def _cl(self) -> int:
        # QUORUM once the cluster has more than one node, else ONE (§4.4).
        from cassandra import ConsistencyLevel

        hosts = self.session.cluster.metadata.all_hosts()
        return int(ConsistencyLevel.QUORUM if len(hosts) > 1 else ConsistencyLevel.ONE)

    async def uses_tablets(self, keyspace: str) -> bool:
        if keyspace not in self._tablets:
            from cassandra import InvalidRequest

            try:
                stmt = await self.session.prepare(USES_TABLETS)
                rows = await self.session.execute(stmt, [keyspace], consistency=self._cl())
            except InvalidRequest:  # no system_schema.scylla_keyspaces: an older Scylla, vnodes
                rows = []
            self._tablets[keyspace] = bool(rows) and rows[0].get("initial_tablets") is not None
        return self._tablets[keyspace]

    async def generations(self, table: str, *, fresh: bool = False) -> list[int]:
        """Generation (stream set) starts for ``table`` ("ks.table"), ms, ascending."""
        keyspace, name = split_table(table)
        tablets = await self.uses_tablets(keyspace)
        cache_key = table if tablets else ""
        async with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None and not fresh and self.clock() - hit[0] < self.cache_s:
                return hit[1]
            if tablets:
                stmt = await self.session.prepare(TABLET_TIMESTAMPS)
                rows = await self.session.execute(stmt, [keyspace, name], consistency=self._cl())
                starts = sorted({to_ms(r["timestamp"]) for r in rows})
            else:
                rows = await self.session.execute(VNODE_TIMESTAMPS, consistency=self._cl())
                starts = sorted({to_ms(r["time"]) for r in rows})
            self._cache[cache_key] = (self.clock(), starts)
            return starts

    async def next_generation(self, table: str, after: int) -> int | None:
        """Start of the first generation after ``after`` (ms), or None if none is known yet."""
        later = [g for g in await self.generations(table) if g > after]
        return later[0] if later else None

    async def stream_sets(self, table: str, generation: int) -> list[tuple[bytes, ...]]:
        """The generation's streams, grouped (vnodes: one tuple per description row)."""
        keyspace, name = split_table(table)
        if await self.uses_tablets(keyspace):
            stmt = await self.session.prepare(TABLET_STREAMS)
            rows = await self.session.execute(stmt, [keyspace, name, generation], consistency=self._cl())
            ids = sorted((bytes(r["stream_id"]) for r in rows), key=_stream_token)
            n = self.tablet_group_size
            return [tuple(ids[i : i + n]) for i in range(0, len(ids), n)]
        stmt = await self.session.prepare(VNODE_STREAMS)
        rows = await self.session.execute(stmt, [generation], consistency=self._cl())
        rows.sort(key=lambda r: r["range_end"])
        return [tuple(bytes(s) for s in r["streams"] or ()) for r in rows if r["streams"]]

    async def groups(
        self, table: str, *, since_ms: int, ttl_s: int, now_ms: int | None = None
    ) -> list[StreamGroup]:
        """Stream groups of every generation still relevant to a reader starting at ``since_ms``:
        generations that end after ``max(since_ms, now - ttl)`` (ttl 0 = no limit), oldest first."""
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        floor = since_ms if ttl_s <= 0 else max(since_ms, now - ttl_s * 1000)
        starts = await self.generations(table, fresh=True)
        out: list[StreamGroup] = []
        for i, gen in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            if end is not None and end <= floor:
                continue
            sets = await self.stream_sets(table, gen)
            if not sets:
                log.warning(
                    "CDC generation %s of %s has no streams yet (partial publication?); will retry",
                    gen,
                    table,
                )
                continue
            out.extend(
                StreamGroup(table=table, generation=gen, end=end, streams=streams, key=f"{gen}:{idx}")
                for idx, streams in enumerate(sets)
            )
        return out


def split_table(table: str) -> tuple[str, str]:
    ks, dot, name = table.partition(".")
    if not dot or not ks or not name:
        raise ValueError(f"table must be 'keyspace.table', got {table!r}")
    return ks, name


def _stream_token(sid: bytes) -> int:
    return int.from_bytes(sid[:8], "big", signed=True)
