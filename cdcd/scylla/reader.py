"""``GroupReader``: reads one ``StreamGroup`` of one table's CDC log in time windows.

Contract of ``read(start)`` (style.md §7.3 ``Source``):

* Yields ``EventBatch`` values in per-stream order, strictly after ``start`` per stream (Go's
  rule: a group whose ``cdc$time`` is <= the stream's position, in CQL timeuuid order, is
  skipped), never reading rows newer than ``now - confidence_window``.
* Each window ``[begin, end)`` is one prepared, paged query
  ``SELECT * FROM ks."t_scylla_cdc_log" WHERE "cdc$stream_id" IN ? AND "cdc$time" > ? AND "cdc$time" <= ?``
  with ``end = min(begin + window, now - confidence_window, generation end)``. A late write still
  inside the confidence window is therefore never skipped.
* A batch is yielded after every page that completed groups (their streams' ``upto`` move to the
  last group read) and at the end of every window, even an empty one: then ``upto`` moves every
  stream of the group to the window end (``Position.time = min_timeuuid(end)``).
* While behind, windows double from ``window_s`` up to ``max_window_s`` (catch-up: 24 h of backlog
  is ~100 queries per group, not thousands); once caught up it sleeps ``poll_interval_s``.
* While the group's generation is open it asks for the next generation every
  ``generation_poll_s``; once the end is known and every stream has been read up to it, the
  iterator ends (a final batch moves every stream to the end).
* Streams without a start position begin at ``max(generation start, start_floor_ms)``; every
  start is clamped to ``now - cdc ttl`` (older rows are gone; a warning is logged).
* ``SourceUnavailable`` is retried with exponential backoff (full window re-read, already
  delivered groups skipped). Cancelling the iterator loses nothing: positions only move through
  the batches the consumer received.
* A group that cannot be decoded (``UndecodableGroup``) goes to ``on_invalid`` (awaited before the
  batch that moves past it is yielded); without ``on_invalid`` it is raised and reading stops.
* The base schema is re-read when the log table's columns change or a row carries a column the
  decoder does not know.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec

from cdcd.errors import SourceUnavailable
from cdcd.events import ChangeEvent, EventBatch, Position, timeuuid_sort_key, timeuuid_to_micros
from cdcd.scylla.decode import LogDecoder, UndecodableGroup
from cdcd.scylla.generations import StreamDiscovery, StreamGroup, split_table
from cdcd.scylla.limits import ReadLimiter, ReadSlots
from cdcd.scylla.session import ScyllaSession, parse_consistency
from cdcd.scylla.windows import GroupAssembler, RawGroup, max_pos, min_timeuuid, plan_window

__all__ = ["GroupReader", "ReaderConfig"]

log = logging.getLogger(__name__)

LOG_SUFFIX = "_scylla_cdc_log"


class ReaderConfig(msgspec.Struct, frozen=True, kw_only=True):
    confidence_window_s: float = 30.0  # never read rows newer than now - this
    window_s: float = 30.0  # first window size when behind
    max_window_s: float = 900.0  # catch-up windows grow up to this
    poll_interval_s: float = 10.0  # sleep between windows once caught up
    generation_poll_s: float = 15.0  # how often an open generation looks for its successor
    fetch_size: int = 1000  # rows per page
    consistency: str | None = None  # log reads; None = the session's default
    retry_initial_s: float = 1.0  # backoff after SourceUnavailable (doubles, full jitter)
    retry_max_s: float = 30.0
    broken_group_retries: int = 3  # windows an incomplete group may stay incomplete before it is routed

    def __post_init__(self) -> None:
        for name in ("window_s", "max_window_s", "poll_interval_s", "generation_poll_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.confidence_window_s < 0:
            raise ValueError("confidence_window_s must be >= 0")
        if self.max_window_s < self.window_s:
            raise ValueError("max_window_s must be >= window_s")
        if self.fetch_size < 1:
            raise ValueError("fetch_size must be >= 1")
        if self.consistency is not None:
            parse_consistency(self.consistency)


OnInvalid = Callable[[UndecodableGroup], Awaitable[None]]


class GroupReader:
    """Reads one stream group. One ``read()`` at a time per instance."""

    def __init__(
        self,
        session: ScyllaSession,
        discovery: StreamDiscovery,
        group: StreamGroup,
        *,
        config: ReaderConfig | None = None,
        start_floor_ms: int | None = None,
        on_invalid: OnInvalid | None = None,
        clock: Callable[[], float] = time.time,
        limiter: ReadSlots | None = None,
        on_rows: Callable[[int], None] | None = None,
    ) -> None:
        self.session = session
        self.discovery = discovery
        self.group = group
        self.config = config or ReaderConfig()
        self.start_floor_ms = start_floor_ms
        self.on_invalid = on_invalid
        self.clock = clock
        self.limiter: ReadSlots = limiter or ReadLimiter()  # read caps, shared by the replica's readers
        self.on_rows = on_rows  # telemetry: rows read per page
        self.keyspace, self.table = split_table(group.table)
        self.log_table = self.table + LOG_SUFFIX
        self.end: int | None = group.end
        self._decoder: LogDecoder | None = None
        self._log_columns: tuple[str, ...] | None = None
        self._query = (
            f'SELECT * FROM "{_ident(self.keyspace)}"."{_ident(self.log_table)}" '
            'WHERE "cdc$stream_id" IN ? AND "cdc$time" > ? AND "cdc$time" <= ?'
        )
        self._consistency = parse_consistency(self.config.consistency) if self.config.consistency else None
        self._broken_seen: dict[tuple[bytes, uuid.UUID], int] = {}

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    # --------------------------------------------------------------------------------------- read
    async def read(self, start: Mapping[bytes, Position]) -> AsyncIterator[EventBatch]:
        cfg = self.config
        gen = self.group.generation
        await self._with_retry(self._refresh_schema, force=False)
        assert self._decoder is not None
        positions = self._initial_positions(start)
        delivered = dict(positions)  # what the consumer has been told (for the final batch)
        size_us = int(cfg.window_s * 1e6)
        last_gen_check = float("-inf")
        backoff = cfg.retry_initial_s
        while True:
            if self.end is None and self.clock() - last_gen_check >= cfg.generation_poll_s:
                try:
                    self.end = await self.discovery.next_generation(self.group.table, gen)
                    last_gen_check = self.clock()
                except SourceUnavailable as exc:
                    log.warning(
                        "%s group %s: generation lookup failed: %s", self.group.table, self.group.key, exc
                    )
            end_us = None if self.end is None else self.end * 1000
            if end_us is not None:
                end_pos = min_timeuuid(end_us)
                if all(timeuuid_sort_key(p) >= timeuuid_sort_key(end_pos) for p in positions.values()):
                    if any(timeuuid_sort_key(p) < timeuuid_sort_key(end_pos) for p in delivered.values()):
                        yield EventBatch(events=[], upto={s: self._pos(s, end_pos) for s in positions})
                    return
            lower = min(positions.values(), key=timeuuid_sort_key)
            now_us = self._now_us()
            win_end = plan_window(
                lower=lower,
                now_us=now_us,
                confidence_us=int(cfg.confidence_window_s * 1e6),
                size_us=size_us,
                end_us=end_us,
            )
            if win_end is None:
                await asyncio.sleep(cfg.poll_interval_s)
                continue
            try:
                async for batch in self._read_window(positions, lower, win_end):
                    for s, p in batch.upto.items():
                        delivered[s] = p.time
                    yield batch
            except SourceUnavailable as exc:
                delay = random.uniform(0, backoff)
                log.warning(
                    "%s group %s: reading window failed (%s); retrying in %.1fs",
                    self.group.table, self.group.key, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, cfg.retry_max_s)
                continue
            backoff = cfg.retry_initial_s
            caught_up = win_end >= now_us - int(cfg.confidence_window_s * 1e6)
            if caught_up:
                size_us = int(cfg.window_s * 1e6)
                if end_us is None or win_end < end_us:
                    await asyncio.sleep(cfg.poll_interval_s)
            else:
                size_us = min(size_us * 2, int(cfg.max_window_s * 1e6))

    def _initial_positions(self, start: Mapping[bytes, Position]) -> dict[bytes, uuid.UUID]:
        gen = self.group.generation
        floor_ms = max(gen, self.start_floor_ms) if self.start_floor_ms is not None else gen
        ttl = self.decoder.schema.cdc.ttl
        oldest_us = self._now_us() - ttl * 1_000_000 if ttl > 0 else None
        out: dict[bytes, uuid.UUID] = {}
        for s in self.group.streams:
            saved = start.get(s)
            pos = saved.time if saved is not None else min_timeuuid(floor_ms * 1000)
            if oldest_us is not None and timeuuid_to_micros(pos) < oldest_us:
                if saved is not None:
                    log.warning(
                        "%s stream %s: saved position is older than the cdc ttl (%ss); changes may be lost",
                        self.group.table, s.hex(), ttl,
                    )  # fmt: skip
                pos = min_timeuuid(oldest_us)
            out[s] = pos
        return out

    @property
    def decoder(self) -> LogDecoder:
        assert self._decoder is not None
        return self._decoder

    def _pos(self, stream: bytes, t: uuid.UUID) -> Position:
        return Position(generation=self.group.generation, stream_id=stream, time=t)

    # ------------------------------------------------------------------------------------ windows
    async def _read_window(
        self, positions: dict[bytes, uuid.UUID], lower: uuid.UUID, win_end: int
    ) -> AsyncIterator[EventBatch]:
        """Read ``(lower, min_timeuuid(win_end)]``; update ``positions`` as batches are yielded."""
        cols = self.session.log_columns(self.keyspace, self.log_table)
        if cols is not None and cols != self._log_columns:
            await self._refresh_schema(force=False)
        upper = min_timeuuid(win_end)
        stmt = await self.session.prepare(self._query)
        params = [list(self.group.streams), lower, upper]
        assembler = GroupAssembler()
        async for rows in self.session.pages(
            stmt, params, fetch_size=self.config.fetch_size, consistency=self._consistency,
            limiter=self.limiter,
        ):  # fmt: skip
            if self.on_rows is not None:
                self.on_rows(len(rows))
            if rows and self.decoder.unknown_columns(set(rows[0])):
                await self._refresh_schema(force=True)
                unknown = self.decoder.unknown_columns(set(rows[0]))
                if unknown:  # metadata lags the server: retry the window later rather than drop data
                    raise SourceUnavailable(
                        f"{self.group.table}: log columns {sorted(unknown)} are not in the table's schema yet"
                    )
            done, broken = assembler.feed(rows)
            events: list[ChangeEvent] = []
            upto: dict[bytes, Position] = {}
            # ``positions`` moves only once the page's batch is complete: an error part-way (a
            # schema refresh that fails) re-reads the window without skipping what was decoded
            moved = dict(positions)
            for raw in broken:
                if raw[0] not in moved or timeuuid_sort_key(raw[1]) <= timeuuid_sort_key(moved[raw[0]]):
                    continue
                await self._route(self._broken(raw, "rows of a group without cdc$end_of_batch"))
                self._advance(moved, upto, raw[0], raw[1])
            decode_began = time.perf_counter_ns()
            for raw in done:
                stream, t, group_rows = raw
                if stream not in moved or timeuuid_sort_key(t) <= timeuuid_sort_key(moved[stream]):
                    continue  # delivered before (re-read after a retry or restart)
                events.extend(await self._decode(group_rows))
                self._advance(moved, upto, stream, t)
            positions.update(moved)
            if events:
                yield EventBatch(events=events, upto=upto, decode_ns=time.perf_counter_ns() - decode_began)
            elif upto:
                yield EventBatch(events=[], upto=upto)
        # End of the window: every stream is complete up to win_end, except one whose last group
        # is still missing its end-of-batch row (it stays before that group).
        held: bytes | None = None
        pending = assembler.take_pending()
        if pending is not None:
            held = await self._pending_at_end(pending, positions)
        upto = {}
        for s in self.group.streams:
            if s == held:
                continue
            positions[s] = max_pos(positions[s], upper)
            upto[s] = self._pos(s, positions[s])
        yield EventBatch(events=[], upto=upto)

    def _advance(
        self, positions: dict[bytes, uuid.UUID], upto: dict[bytes, Position], s: bytes, t: uuid.UUID
    ) -> None:
        if s in positions:
            positions[s] = max_pos(positions[s], t)
            upto[s] = self._pos(s, positions[s])

    async def _pending_at_end(self, raw: RawGroup, positions: dict[bytes, uuid.UUID]) -> bytes | None:
        """An incomplete group at the window end: hold its stream back (its rows may still be
        arriving) unless it has stayed incomplete for ``broken_group_retries`` windows."""
        stream, t, _ = raw
        if stream not in positions or timeuuid_sort_key(t) <= timeuuid_sort_key(positions[stream]):
            return None
        seen = self._broken_seen.get((stream, t), 0) + 1
        if seen < self.config.broken_group_retries:
            self._broken_seen[(stream, t)] = seen
            log.warning(
                "%s stream %s: group %s has no end-of-batch row yet", self.group.table, stream.hex(), t
            )
            return stream
        self._broken_seen.pop((stream, t), None)
        await self._route(self._broken(raw, "group never got its cdc$end_of_batch row"))
        return None

    def _broken(self, raw: RawGroup, reason: str) -> UndecodableGroup:
        stream, t, rows = raw
        return UndecodableGroup(reason, table=self.group.table, stream_id=stream, time=t, rows=rows)

    async def _decode(self, rows: list[dict[str, Any]]) -> list[ChangeEvent]:
        try:
            return self.decoder.decode(rows, generation=self.group.generation)
        except UndecodableGroup as first:
            # Maybe our schema is outdated (ALTER TYPE / TABLE since the last read): retry once.
            await self._refresh_schema(force=True)
            try:
                return self.decoder.decode(rows, generation=self.group.generation)
            except UndecodableGroup:
                await self._route(first)
                return []

    async def _route(self, err: UndecodableGroup) -> None:
        if self.on_invalid is None:
            raise err
        log.error("%s", err)
        await self.on_invalid(err)

    async def _refresh_schema(self, *, force: bool) -> None:
        schema = await self.session.table_schema(self.keyspace, self.table, refresh=force)
        if not schema.cdc.enabled:
            log.warning(
                "%s: CDC is disabled on the table; reading what its log still holds", schema.qualified
            )
        if self._decoder is None or self._decoder.schema != schema:
            self._decoder = LogDecoder(schema)
        self._log_columns = self.session.log_columns(self.keyspace, self.log_table)
        if self._log_columns is None and not force:  # metadata not caught up with a new table yet
            await self._refresh_schema(force=True)
            return
        if self._log_columns is None:
            raise LookupError(f"CDC log table {self.keyspace}.{self.log_table} does not exist")

    async def _with_retry(self, fn: Callable[..., Awaitable[None]], **kwargs: Any) -> None:
        backoff = self.config.retry_initial_s
        while True:
            try:
                await fn(**kwargs)
                return
            except SourceUnavailable as exc:
                delay = random.uniform(0, backoff)
                log.warning("%s: %s; retrying in %.1fs", self.group.table, exc, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.config.retry_max_s)


def _ident(name: str) -> str:
    """Validate a keyspace/table name for quoting (Scylla names: letters, digits, underscore)."""
    if not name or not all(ch.isalnum() or ch == "_" for ch in name) or not name.isascii():
        raise ValueError(f"invalid keyspace/table name {name!r}")
    return name
