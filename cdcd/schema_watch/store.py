"""``SchemaStore``: each source table's schema versions in Redis, shared by every replica (R-32).

Keys (``P`` = ``state.key_prefix``, ``T`` = ``keyspace.table``)::

    P:schema:current:T   the last schema recorded: {version, fingerprint, table_id, schema, at}
                         (no TTL: the baseline a restarted replica compares the live table with,
                         so a change made while cdcd was down is still detected)
    P:schema:cache:T     the same, with a TTL of ``source.schema_check_interval``: a replica whose
                         own check is due reads the cache instead of asking Scylla while another
                         replica checked recently; it expires, so a change is seen within 60 s
    P:schema:history:T   list of recorded versions, newest first (at most 1000)
    P:schema:halt:T      set while the table is halted: {version, since_us, reason, at}

``record()`` is atomic (WATCH/MULTI on ``current``): two replicas seeing the same change record
one version.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex

from cdcd.schema import TableSchema
from cdcd.schema_watch.diff import Change, fingerprint
from cdcd.state.common import check_client, check_prefix, key_part, redis_errors

__all__ = ["Halt", "HistoryEntry", "SchemaStore", "StoredSchema"]

HISTORY_MAX = 1000


class StoredSchema(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    fingerprint: str
    table_id: str | None  # system_schema.tables.id (None: the table does not exist)
    schema: TableSchema | None
    at: float  # when this version was recorded (Unix seconds)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    at: float
    changes: list[Change]
    columns_before: list[str]
    columns_after: list[str]
    replica: str = ""


class Halt(msgspec.Struct, frozen=True, kw_only=True):
    version: int  # the schema version that halted the table
    since_us: int  # events written at or after this time (µs) are held
    reason: str
    at: float


_enc = msgspec.json.Encoder()
_stored = msgspec.json.Decoder(StoredSchema)
_entry = msgspec.json.Decoder(HistoryEntry)
_halt = msgspec.json.Decoder(Halt)


class SchemaStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "cdcd", cache_ttl: float = 30.0) -> None:
        self.client = check_client(client)
        self.prefix = check_prefix(prefix)
        self.cache_ttl = max(1, int(cache_ttl))

    def _key(self, kind: str, table: str) -> str:
        return f"{self.prefix}:schema:{kind}:{key_part(table, 'table')}"

    async def current(self, table: str) -> StoredSchema | None:
        with redis_errors(f"reading the recorded schema of {table}"):
            raw = await self.client.get(self._key("current", table))
        return None if raw is None else _stored.decode(raw)

    async def cached(self, table: str) -> StoredSchema | None:
        with redis_errors(f"reading the schema cache of {table}"):
            raw = await self.client.get(self._key("cache", table))
        return None if raw is None else _stored.decode(raw)

    async def refresh_cache(self, table: str, stored: StoredSchema) -> None:
        with redis_errors(f"caching the schema of {table}"):
            await self.client.set(self._key("cache", table), _enc.encode(stored), ex=self.cache_ttl)

    async def record(
        self,
        table: str,
        schema: TableSchema | None,
        table_id: str | None,
        *,
        changes: list[Change],
        columns_before: list[str],
        columns_after: list[str],
        replica: str = "",
    ) -> tuple[StoredSchema, bool]:
        """Record ``schema`` as the table's newest version unless it already is (same
        fingerprint and table id). Returns the stored version and whether this call created it."""
        fp = "absent" if schema is None else fingerprint(schema)
        key = self._key("current", table)
        with redis_errors(f"recording the schema of {table}"):
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        old = None if raw is None else _stored.decode(raw)
                        if old is not None and old.fingerprint == fp and old.table_id == table_id:
                            await pipe.unwatch()  # type: ignore[no-untyped-call]
                            return old, False
                        new = StoredSchema(
                            version=(old.version + 1) if old is not None else 1,
                            fingerprint=fp,
                            table_id=table_id,
                            schema=schema,
                            at=time.time(),
                        )
                        entry = HistoryEntry(
                            version=new.version, at=new.at, changes=changes,
                            columns_before=columns_before, columns_after=columns_after, replica=replica,
                        )  # fmt: skip
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, _enc.encode(new))
                        pipe.set(self._key("cache", table), _enc.encode(new), ex=self.cache_ttl)
                        pipe.lpush(self._key("history", table), _enc.encode(entry))
                        pipe.ltrim(self._key("history", table), 0, HISTORY_MAX - 1)
                        await pipe.execute()
                        return new, True
                    except rex.WatchError:
                        continue

    async def history(self, table: str, limit: int = 100) -> list[HistoryEntry]:
        """Newest first."""
        with redis_errors(f"reading the schema history of {table}"):
            raws = await self.client.lrange(self._key("history", table), 0, max(0, limit - 1))
        return [_entry.decode(r) for r in raws]

    async def halt(self, table: str, halt: Halt) -> Halt:
        """Mark the table halted unless it already is (the earlier halt stays). Returns the halt in force."""
        key = self._key("halt", table)
        with redis_errors(f"halting {table}"):
            if await self.client.set(key, _enc.encode(halt), nx=True):
                return halt
            raw = await self.client.get(key)
        return halt if raw is None else _halt.decode(raw)

    async def halted(self, table: str) -> Halt | None:
        with redis_errors(f"reading the halt state of {table}"):
            raw = await self.client.get(self._key("halt", table))
        return None if raw is None else _halt.decode(raw)

    async def resume(self, table: str) -> Halt | None:
        """Lift the halt; returns what it was (None: the table was not halted). The version
        resumed is kept (``resumed``): a halt gone without it was lost with Redis's state."""
        key = self._key("halt", table)
        with redis_errors(f"resuming {table}"):
            raw = await self.client.get(key)
            if raw is None:
                return None
            was = _halt.decode(raw)
            # first the resumed version, then the halt goes: nobody sees it gone without a resume
            await self.client.set(self._key("resumed", table), str(was.version))
            await self.client.delete(key)
        return was

    async def resumed(self, table: str) -> int | None:
        """The schema version whose halt an operator lifted last (None: none recorded)."""
        with redis_errors(f"reading the resume state of {table}"):
            raw = await self.client.get(self._key("resumed", table))
        return None if raw is None else int(raw)


def describe_entry(e: HistoryEntry) -> dict[str, Any]:
    return {
        "version": e.version,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.at)),
        "changes": [c.describe() for c in e.changes] or ["first version recorded"],
        "columns_before": e.columns_before,
        "columns_after": e.columns_after,
        "replica": e.replica,
    }
