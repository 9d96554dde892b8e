"""Dead-letter store, validation queue and staleness audit on Redis (R-20, R-22, R-23).

One store, three queues (``kind``):

* ``dead``: rows a destination refused on every one of ``max_attempts`` writes (``BadRows``).
* ``validation``: events a stage rejected as invalid (``InvalidRecord``); operators correct
  and resubmit them.
* ``stale``: events rejected by the staleness stage (audit).

Each entry keeps the original ``ChangeEvent`` (lossless msgpack, ``cdcd.state.codec``), the
destination, table, reason, rejecting stage, attempts and first/last failure time.

Layout (``P`` = prefix)::

    P:dlq:<kind>:<dest>:e    hash  entry id -> msgpack DeadLetter
    P:dlq:<kind>:<dest>:o    zset  entry id scored by first failure time (listing order)
    P:dlq:<kind>:dests       set   destinations that have (or had) entries

Entry ids are deterministic (table, stream, cdc$time, batch_seq), so the same event failing
again, for instance after a crash replayed its batch, updates one entry (attempts add up, the
first failure time is kept) instead of duplicating it.

Nothing is ever trimmed or expired: entries leave only through ``delete`` or a successful
``replay``. Memory therefore grows with the number of failed events: roughly the msgpack size
of the event plus ~200 bytes per entry (a 1 KiB event: ~1.2 KiB; a million of them: ~1.2 GiB).
Watch ``count()`` (exported as the DLQ-size metric) and alert on it. Run Redis with
``maxmemory-policy noeviction``: when memory is full, adds fail with ``StateUnavailable``
(retriable) and the pipeline waits instead of losing entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis

from cdcd.errors import ConfigError
from cdcd.events import ChangeEvent
from cdcd.state.codec import decode_value, encode_value, tag_event
from cdcd.state.common import StateError, check_client, check_prefix, key_part, redis_errors

__all__ = ["KINDS", "DeadLetter", "DeadLetterStore", "Kind", "entry_id"]

Kind = Literal["dead", "validation", "stale"]
KINDS: tuple[Kind, ...] = ("dead", "validation", "stale")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One failed or rejected event, with the context needed to judge and replay it."""

    id: str  # entry_id(event): stable across retries and restarts
    kind: Kind
    destination: str
    table: str  # "keyspace.table" of the source
    event: ChangeEvent  # the original event, exactly as the sink or stage received it
    reason: str  # the error message or rejection reason
    stage: str  # "sending" for sink write failures, else the rejecting stage's name
    attempts: int  # failed write attempts (0 for stage rejections)
    first_failed_at: float  # epoch seconds
    last_failed_at: float  # epoch seconds
    columns: tuple[str, ...] = ()  # the offending column(s), when known (validation)
    rule: str = ""  # the rule that refused it ("max_length", "not_null", "destination", ...)


def entry_id(event: ChangeEvent) -> str:
    """Deterministic id of the entry for ``event``: table, stream, cdc$time, batch_seq."""
    return f"{event.table}/{event.pos.stream_id.hex()}/{event.pos.time}/{event.batch_seq}"


def _check_kind(kind: str) -> Kind:
    for k in KINDS:
        if kind == k:
            return k
    raise ConfigError(f"unknown dead-letter queue {kind!r}; expected one of {', '.join(KINDS)}")


def _encode(entry: DeadLetter) -> bytes:
    return encode_value(msgspec.structs.replace(entry, event=tag_event(entry.event)))


def _decode(blob: bytes, where: str) -> DeadLetter:
    try:
        return decode_value(blob, DeadLetter)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"dead-letter entry {where} is unreadable: {exc}") from exc


def _merge(old: DeadLetter, new: DeadLetter) -> DeadLetter:
    return msgspec.structs.replace(
        new,
        attempts=old.attempts + new.attempts,
        first_failed_at=min(old.first_failed_at, new.first_failed_at),
        last_failed_at=max(old.last_failed_at, new.last_failed_at),
    )


class DeadLetterStore:
    """Durable queues of failed/rejected events per (kind, destination).

    Methods block on Redis and raise ``StateUnavailable`` (retriable) while it is down,
    ``StateError`` otherwise. Safe for concurrent use by many pipelines.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "cdcd") -> None:
        self.client = check_client(client)
        self.prefix = check_prefix(prefix)

    def _keys(self, kind: str, dest: str) -> tuple[str, str]:
        base = f"{self.prefix}:dlq:{_check_kind(kind)}:{key_part(dest, 'destination')}"
        return f"{base}:e", f"{base}:o"

    def _dests_key(self, kind: str) -> str:
        return f"{self.prefix}:dlq:{_check_kind(kind)}:dests"

    @staticmethod
    def make(
        kind: Kind,
        destination: str,
        event: ChangeEvent,
        *,
        reason: str,
        stage: str,
        attempts: int,
        first_failed_at: float,
        last_failed_at: float | None = None,
        columns: Sequence[str] = (),
        rule: str = "",
    ) -> DeadLetter:
        """Build an entry for ``event`` with its deterministic id."""
        return DeadLetter(
            id=entry_id(event),
            kind=_check_kind(kind),
            destination=destination,
            table=event.table,
            event=event,
            reason=reason,
            stage=stage,
            attempts=attempts,
            first_failed_at=first_failed_at,
            last_failed_at=first_failed_at if last_failed_at is None else last_failed_at,
            columns=tuple(columns),
            rule=rule,
        )

    # ---------------------------------------------------------------------------------- writing

    async def add(self, entries: Sequence[DeadLetter]) -> None:
        """Store ``entries`` atomically per (kind, destination); an existing id is merged
        (attempts summed, earliest first failure kept, the newest event/reason stored)."""
        groups: dict[tuple[str, str], list[DeadLetter]] = {}
        for e in entries:
            groups.setdefault((_check_kind(e.kind), e.destination), []).append(e)
        for (kind, dest), items in groups.items():
            await self._add_group(kind, dest, items)

    async def _add_group(self, kind: str, dest: str, items: list[DeadLetter]) -> None:
        ekey, okey = self._keys(kind, dest)
        latest: dict[str, DeadLetter] = {}
        for e in items:
            latest[e.id] = _merge(latest[e.id], e) if e.id in latest else e
        ids = list(latest)

        async def txn(pipe: Any) -> None:
            existing: list[bytes | None] = await pipe.hmget(ekey, ids)
            pipe.multi()
            for eid, blob in zip(ids, existing, strict=True):
                entry = latest[eid]
                if blob is not None:
                    entry = _merge(_decode(blob, f"{ekey}/{eid}"), entry)
                pipe.hset(ekey, eid, _encode(entry))
                pipe.zadd(okey, {eid: entry.first_failed_at})
            pipe.sadd(self._dests_key(kind), dest)

        with redis_errors(f"add to dead-letter queue {ekey}"):
            await self.client.transaction(txn, ekey)

    async def update(self, entry: DeadLetter) -> None:
        """Replace a stored entry (e.g. an operator corrected its event). KeyError if absent."""
        ekey, okey = self._keys(entry.kind, entry.destination)

        async def txn(pipe: Any) -> None:
            if not await pipe.hexists(ekey, entry.id):
                raise KeyError(f"no dead-letter entry {entry.id} in {entry.kind}/{entry.destination}")
            pipe.multi()
            pipe.hset(ekey, entry.id, _encode(entry))
            pipe.zadd(okey, {entry.id: entry.first_failed_at})

        with redis_errors(f"update dead-letter entry {entry.id}"):
            await self.client.transaction(txn, ekey)

    async def delete(self, kind: Kind, dest: str, ids: Iterable[str]) -> int:
        """Remove entries; returns how many existed."""
        ids = list(ids)
        if not ids:
            return 0
        ekey, okey = self._keys(kind, dest)
        with redis_errors(f"delete from dead-letter queue {ekey}"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(ekey, *ids)
                pipe.zrem(okey, *ids)
                removed, _ = await pipe.execute()
        return int(removed)

    # ------------------------------------------------------------------------ operator retries

    def _retry_key(self, dest: str) -> str:
        return f"{self.prefix}:dlq:retrying:{key_part(dest, 'destination')}"

    async def mark_retrying(self, entry: DeadLetter, now: float) -> bool:
        """Note that ``entry`` is being resubmitted (before its write). Returns whether an earlier
        resubmission of it was interrupted (its mark was still there)."""
        with redis_errors(f"mark dead-letter entry {entry.id} as retrying"):
            previous = await self.client.hget(self._retry_key(entry.destination), f"{entry.kind}/{entry.id}")
            await self.client.hset(self._retry_key(entry.destination), f"{entry.kind}/{entry.id}", str(now))
        return previous is not None

    async def resolve(self, entry: DeadLetter, *, audit: DeadLetter | None = None) -> bool:
        """Remove ``entry`` (and its retry mark) at once, storing ``audit`` (e.g. the ``stale``
        record of a skipped correction) in the same transaction. Returns whether it existed."""
        ekey, okey = self._keys(entry.kind, entry.destination)
        with redis_errors(f"resolve dead-letter entry {entry.id}"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(ekey, entry.id)
                pipe.zrem(okey, entry.id)
                pipe.hdel(self._retry_key(entry.destination), f"{entry.kind}/{entry.id}")
                if audit is not None:
                    akey, aokey = self._keys(audit.kind, audit.destination)
                    pipe.hset(akey, audit.id, _encode(audit))
                    pipe.zadd(aokey, {audit.id: audit.first_failed_at})
                    pipe.sadd(self._dests_key(audit.kind), audit.destination)
                removed, *_ = await pipe.execute()
        return bool(removed)

    async def unmark(self, entry: DeadLetter) -> None:
        """The resubmission of ``entry`` ended without applying it (refused again)."""
        with redis_errors(f"unmark dead-letter entry {entry.id}"):
            await self.client.hdel(self._retry_key(entry.destination), f"{entry.kind}/{entry.id}")

    # ---------------------------------------------------------------------------------- reading

    async def count(self, kind: Kind, dest: str) -> int:
        ekey, _ = self._keys(kind, dest)
        with redis_errors(f"count {ekey}"):
            return int(await self.client.hlen(ekey))

    async def destinations(self, kind: Kind) -> list[str]:
        """Destinations that ever had entries in this queue (sorted)."""
        with redis_errors("list dead-letter destinations"):
            raw: set[bytes] = await self.client.smembers(self._dests_key(kind))  # type: ignore[assignment]
        return sorted(x.decode() for x in raw)

    async def get(self, kind: Kind, dest: str, entry: str) -> DeadLetter | None:
        ekey, _ = self._keys(kind, dest)
        with redis_errors(f"get {ekey}/{entry}"):
            blob: bytes | None = await self.client.hget(ekey, entry)  # type: ignore[assignment]
        return None if blob is None else _decode(blob, f"{ekey}/{entry}")

    async def iterate(
        self, kind: Kind, dest: str, *, table: str | None = None, page: int = 100
    ) -> AsyncIterator[DeadLetter]:
        """Entries oldest first (by first failure), optionally of one source table. Entries added
        or deleted meanwhile may or may not be seen."""
        ekey, okey = self._keys(kind, dest)
        start = 0
        while True:
            with redis_errors(f"list {okey}"):
                ids: list[bytes] = await self.client.zrange(okey, start, start + page - 1)  # type: ignore[assignment]
                blobs: list[bytes | None] = await self.client.hmget(ekey, ids) if ids else []  # type: ignore[assignment]
            for eid, blob in zip(ids, blobs, strict=True):
                if blob is None:
                    continue
                entry = _decode(blob, f"{ekey}/{eid.decode()}")
                if table is None or entry.table == table:
                    yield entry
            if len(ids) < page:
                return
            start += page

    async def list(
        self, kind: Kind, dest: str, *, table: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Up to ``limit`` entries, oldest first."""
        out: list[DeadLetter] = []
        async for entry in self.iterate(kind, dest, table=table, page=min(max(limit, 1), 500)):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    async def replay(
        self,
        kind: Kind,
        dest: str,
        handler: Callable[[Sequence[DeadLetter]], Awaitable[None]],
        *,
        table: str | None = None,
        ids: Iterable[str] | None = None,
        batch: int = 100,
    ) -> int:
        """Hand entries to ``handler`` in batches, oldest first; each batch is deleted only after
        ``handler`` returned. If it raises, that batch and the rest stay stored and the error
        propagates (at-least-once: a handler must be idempotent, as sink writes are).
        ``ids`` restricts replay to those entries. Returns the number of entries replayed."""
        done = 0
        if ids is not None:
            wanted = [e for e in [await self.get(kind, dest, i) for i in ids] if e is not None]
            wanted = [e for e in wanted if table is None or e.table == table]
            for i in range(0, len(wanted), batch):
                chunk = wanted[i : i + batch]
                await handler(chunk)
                await self.delete(kind, dest, [e.id for e in chunk])
                done += len(chunk)
            return done
        while chunk := await self.list(kind, dest, table=table, limit=batch):
            await handler(chunk)
            await self.delete(kind, dest, [e.id for e in chunk])
            done += len(chunk)
        return done
