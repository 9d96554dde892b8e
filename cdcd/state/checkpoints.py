"""Durable replication positions on Redis: one checkpoint per (destination, table, generation, stream).

Layout (``P`` = the configured prefix, e.g. ``cdcd:prod``)::

    P:ckpt:<dest>:<keyspace.table>:<generation ms>   hash  stream_id (16 raw bytes) -> msgpack Position
    P:done:<dest>:<keyspace.table>:<generation ms>   set   stream_ids whose generation is fully applied

Keys are per *generation*, fields per *stream*, so regrouping streams (another replica count,
another group size) never orphans a checkpoint. A save writes all streams of one group with a
single HSET inside one Lua script: it is atomic, and the script is where fencing lives.

Fencing: a ``Fence`` (``cdcd.app.leases.LeaseCoordinator``) names the lease key and the token this
replica holds for a group; the script then writes only if ``GET lease_key == token`` and
otherwise fails, surfacing as ``LeaseLost``. Callers never pass tokens: the store is built with
the fence, so adding leases changes no caller.

In Redis Cluster, give the prefix a hash tag (``{cdcd:prod}``) so a group's keys and its lease
key share one slot.

Errors: ``StateUnavailable`` (retriable) when Redis is down or refuses writes for now,
``LeaseLost`` when the fence check fails, ``StateError`` for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex

from cdcd.errors import LeaseLost
from cdcd.events import Position
from cdcd.state.common import check_client, check_prefix, key_part, redis_errors

__all__ = ["CheckpointStore", "Fence", "GroupRef"]

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Position)

# KEYS[1] target key; KEYS[2] lease key (only when fenced).
# ARGV[1] command (HSET or SADD); ARGV[2] lease token (only when fenced); then the command's args.
_FENCED_WRITE = """
local first = 2
if #KEYS > 1 then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then
    return redis.error_reply('LEASELOST lease ' .. KEYS[2] .. ' is not held by this token')
  end
  first = 3
end
return redis.call(ARGV[1], KEYS[1], unpack(ARGV, first))
"""


class GroupRef(Protocol):
    """What the store needs of a stream group (``cdcd.scylla.StreamGroup`` satisfies it)."""

    @property
    def table(self) -> str: ...

    @property
    def generation(self) -> int: ...

    @property
    def streams(self) -> Sequence[bytes]: ...

    @property
    def key(self) -> str: ...


class Fence(Protocol):
    """Lease check for saves. ``lease_for`` returns (full Redis key of the lease, token held by
    this replica), or None to write unfenced. Raising LeaseLost here also aborts the save."""

    def lease_for(self, dest: str, group: GroupRef) -> tuple[str, str] | None: ...


class CheckpointStore:
    """Checkpoints and "generation done" markers of every destination, under one key prefix.

    The client must be created with ``decode_responses=False`` (values are binary). Methods may
    block on the network (bounded by the client's socket timeouts) and are safe to call
    concurrently from many pipelines.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "cdcd", fence: Fence | None = None) -> None:
        self.client = check_client(client)
        self.prefix = check_prefix(prefix)
        self.fence = fence
        self._script = client.register_script(_FENCED_WRITE)

    # ------------------------------------------------------------------------------------- keys

    def _suffix(self, dest: str, table: str, generation: int) -> str:
        return f"{key_part(dest, 'destination')}:{key_part(table, 'table')}:{int(generation)}"

    def checkpoint_key(self, dest: str, group: GroupRef) -> str:
        return f"{self.prefix}:ckpt:{self._suffix(dest, group.table, group.generation)}"

    def done_key(self, dest: str, group: GroupRef) -> str:
        return f"{self.prefix}:done:{self._suffix(dest, group.table, group.generation)}"

    # ---------------------------------------------------------------------------------- reading

    async def load(self, dest: str, group: GroupRef) -> dict[bytes, Position]:
        """Saved positions of the group's streams; streams never saved are absent ({} if none)."""
        streams = list(group.streams)
        if not streams:
            return {}
        key = self.checkpoint_key(dest, group)
        with redis_errors(f"load checkpoints {key}"):
            raw: list[bytes | None] = await self.client.hmget(key, streams)  # type: ignore[assignment]
        out: dict[bytes, Position] = {}
        for stream, blob in zip(streams, raw, strict=True):
            if blob is None:
                continue
            try:
                out[stream] = _DECODER.decode(blob)
            except msgspec.DecodeError as exc:
                raise ValueError(f"checkpoint {key} stream {stream.hex()} is corrupt: {exc}") from exc
        return out

    async def is_done(self, dest: str, group: GroupRef) -> bool:
        """True once ``mark_done`` recorded every stream of the group (for this destination)."""
        streams = list(group.streams)
        if not streams:
            return False
        key = self.done_key(dest, group)
        with redis_errors(f"read done marker {key}"):
            flags = await self.client.smismember(key, streams)
        return all(flags)

    # ---------------------------------------------------------------------------------- writing

    async def save(self, dest: str, group: GroupRef, positions: Mapping[bytes, Position]) -> None:
        """Store ``positions`` (stream -> last applied position) of one group atomically.

        Every stream must belong to the group and every position to its generation (ValueError
        otherwise: a bug upstream, never written). Empty ``positions`` is a no-op.
        """
        if not positions:
            return
        members = set(group.streams)
        args: list[bytes] = []
        for stream, pos in positions.items():
            if stream not in members or pos.stream_id != stream:
                raise ValueError(f"stream {stream.hex()} is not in group {group.key} of {group.table}")
            if pos.generation != group.generation:
                raise ValueError(
                    f"position of stream {stream.hex()} is in generation {pos.generation}, "
                    f"group {group.key} is generation {group.generation}"
                )
            args += [stream, _ENCODER.encode(pos)]
        await self._write(dest, group, self.checkpoint_key(dest, group), b"HSET", args)

    async def mark_done(self, dest: str, group: GroupRef) -> None:
        """Record that the group's generation is closed and fully applied for ``dest``."""
        if group.streams:
            await self._write(dest, group, self.done_key(dest, group), b"SADD", list(group.streams))

    async def forget(self, dest: str, group: GroupRef) -> None:
        """Delete the checkpoints and done markers of the group's whole generation for ``dest``
        (housekeeping once the generation has left the CDC log TTL)."""
        with redis_errors("forget checkpoints"):
            await self.client.delete(self.checkpoint_key(dest, group), self.done_key(dest, group))

    async def _write(self, dest: str, group: GroupRef, key: str, command: bytes, args: list[bytes]) -> None:
        lease = self.fence.lease_for(dest, group) if self.fence is not None else None
        keys: list[str] = [key]
        argv: list[bytes | str] = [command]
        if lease is not None:
            keys.append(lease[0])
            argv.append(lease[1])
        argv += args
        with redis_errors(f"save {key}"):
            try:
                await self._script(keys=keys, args=argv)
            except rex.ResponseError as exc:
                if str(exc).startswith("LEASELOST"):
                    raise LeaseLost(f"{dest} {group.table} group {group.key}: {exc}") from exc
                raise
