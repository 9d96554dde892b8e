"""Leases on (table, stream group) and replica heartbeats, on Redis.

Layout (``P`` = the configured prefix)::

    P:lease:<keyspace.table>:<group key>   string  "<epoch>:<replica id>", expires after the lease TTL
    P:epoch:<keyspace.table>:<group key>   string  counter: the last epoch handed out (only grows)
    P:replica:<replica id>                 string  JSON heartbeat of a live replica, expires after its TTL

A lease is taken only when its key does not exist (free, released, or expired); taking it
increments the group's epoch counter, so every holder gets a token no earlier holder had. The
token is the fencing value: ``CheckpointStore`` (``cdcd.state.checkpoints``) writes a checkpoint
only while ``GET lease key == token`` (its Lua check). Renewing and releasing likewise act only
when the key still holds the caller's token. All three are single Lua scripts (atomic).

The replica id is unique per process (``replica_id``): two processes with the same configured
name never share a token. Heartbeats carry what ``cdcd status`` prints (see
``cdcd.app.leases``); this module only stores and lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from cdcd.state.common import check_client, check_prefix, key_part, redis_errors

__all__ = ["LeaseInfo", "LeaseStore", "gone_here", "host_identity", "replica_id"]

_GROUP_KEY = re.compile(r"^[0-9]{1,20}:[0-9]{1,9}$")

# KEYS[1] lease, KEYS[2] epoch counter; ARGV[1] replica id, ARGV[2] TTL (ms). The token, or nil.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
local token = epoch .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

# KEYS[1] lease, KEYS[2] epoch counter; ARGV[1] the dead holder's token, ARGV[2] replica id,
# ARGV[3] TTL (ms). The new token, or nil if the lease no longer holds that token.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local epoch = redis.call('INCR', KEYS[2])
local token = epoch .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
return token
"""

# KEYS[1] lease; ARGV[1] token, ARGV[2] TTL (ms). 1 if renewed, 0 if the lease is not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] token. 1 if released, 0 if it was not ours (any more).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def replica_id(name: str) -> str:
    """A process-unique id usable in keys: the configured name (or host name), pid, random tag."""
    base = re.sub(r"[^A-Za-z0-9_.\-]", "-", name or socket.gethostname())[:100] or "cdcd"
    return f"{base}.{os.getpid()}.{secrets.token_hex(3)}"


def host_identity() -> dict[str, Any]:
    """Where this process runs: kernel boot id, pid namespace and pid. Two replicas with the same
    boot id and pid namespace see the same processes, so one can tell that the other is gone."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    pidns = 0
    with contextlib.suppress(OSError):
        pidns = os.stat("/proc/self/ns/pid").st_ino
    return {"boot": boot, "pidns": pidns, "pid": os.getpid()}


def gone_here(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> bool:
    """True only when ``theirs`` (a heartbeat's ``host``) names a process of this very kernel and
    pid namespace that no longer exists. Anything unknown counts as alive."""
    if not mine.get("boot") or not mine.get("pidns"):
        return False
    if theirs.get("boot") != mine["boot"] or theirs.get("pidns") != mine["pidns"]:
        return False
    pid = theirs.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False  # (several coordinators in one process: tests) unknown: count it alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists (another user's process)
    return False


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One lease as Redis holds it now."""

    table: str
    group: str
    epoch: int
    owner: str  # replica id
    expires_in: float  # seconds


def epoch_of(token: str) -> int:
    """The epoch part of a lease token ("<epoch>:<replica id>")."""
    return int(token.split(":", 1)[0])


class LeaseStore:
    """Lease and heartbeat operations. The client must use ``decode_responses=False``."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "cdcd") -> None:
        self.client = check_client(client)
        self.prefix = check_prefix(prefix)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)

    # ------------------------------------------------------------------------------------- keys

    def _suffix(self, table: str, group: str) -> str:
        if not _GROUP_KEY.match(group):
            raise ValueError(f"stream group key {group!r} is not '<generation>:<index>'")
        return f"{key_part(table, 'table')}:{group}"

    def lease_key(self, table: str, group: str) -> str:
        return f"{self.prefix}:lease:{self._suffix(table, group)}"

    def epoch_key(self, table: str, group: str) -> str:
        return f"{self.prefix}:epoch:{self._suffix(table, group)}"

    def replica_key(self, replica: str) -> str:
        return f"{self.prefix}:replica:{key_part(replica, 'replica id')}"

    # ----------------------------------------------------------------------------------- leases

    async def acquire(self, table: str, group: str, replica: str, ttl: float) -> str | None:
        """Take the lease if nobody holds it: the new token, or None."""
        keys = [self.lease_key(table, group), self.epoch_key(table, group)]
        with redis_errors(f"acquire lease {keys[0]}"):
            token = await self._acquire(keys=keys, args=[replica, int(ttl * 1000)])
        return None if token is None else _text(token)

    async def take_over(self, table: str, group: str, dead: str, replica: str, ttl: float) -> str | None:
        """Take a lease still held by ``dead`` (a token of a process known to be gone) before it
        expires: the new token, or None if the lease changed meanwhile."""
        keys = [self.lease_key(table, group), self.epoch_key(table, group)]
        with redis_errors(f"take over lease {keys[0]}"):
            token = await self._take_over(keys=keys, args=[dead, replica, int(ttl * 1000)])
        return None if token is None else _text(token)

    async def renew(self, table: str, group: str, token: str, ttl: float) -> bool:
        """Extend the lease to ``ttl`` from now if it still holds ``token``."""
        key = self.lease_key(table, group)
        with redis_errors(f"renew lease {key}"):
            return bool(await self._renew(keys=[key], args=[token, int(ttl * 1000)]))

    async def release(self, table: str, group: str, token: str) -> bool:
        """Give the lease up if it still holds ``token`` (False: it was not ours any more)."""
        key = self.lease_key(table, group)
        with redis_errors(f"release lease {key}"):
            return bool(await self._release(keys=[key], args=[token]))

    async def leases(self) -> list[LeaseInfo]:
        """Every lease held now (any table, any replica)."""
        pattern = f"{self.prefix}:lease:*"
        head = len(self.prefix) + len(":lease:")
        out: list[LeaseInfo] = []
        with redis_errors("list leases"):
            keys = [k async for k in self.client.scan_iter(match=pattern, count=500)]
            if not keys:
                return []
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.get(k)
                pipe.pttl(k)
            replies = await pipe.execute()
        for i, k in enumerate(keys):
            token, pttl = replies[2 * i], replies[2 * i + 1]
            if token is None:
                continue  # expired between SCAN and GET
            table, _, group = _text(k)[head:].partition(":")
            epoch, _, owner = _text(token).partition(":")
            out.append(LeaseInfo(table=table, group=group, epoch=int(epoch), owner=owner,
                                 expires_in=max(0.0, int(pttl) / 1000)))  # fmt: skip
        return sorted(out, key=lambda x: (x.table, _group_order(x.group)))

    # ------------------------------------------------------------------------------- heartbeats

    async def heartbeat(self, replica: str, info: Mapping[str, Any], ttl: float) -> bool:
        """Announce ``replica`` as live for ``ttl`` seconds, with ``info`` (JSON-able). True when
        the previous heartbeat was still there (False: first one, expired, or Redis lost it)."""
        key = self.replica_key(replica)
        with redis_errors(f"heartbeat {key}"):
            old = await self.client.set(
                key, json.dumps(info, separators=(",", ":")), px=int(ttl * 1000), get=True
            )
        return old is not None

    def lost_key(self) -> str:
        return f"{self.prefix}:leases:lost"

    async def mark_lost(self, ttl: float) -> None:
        """Record (for every replica) that Redis was just seen to have lost its state: no free lease
        is taken until one lease TTL after this (``settle_wait``)."""
        with redis_errors("record the loss of the lease state"):
            sec, usec = await self.client.time()
            await self.client.set(self.lost_key(), str(sec * 1000 + usec // 1000), px=int(2 * ttl * 1000))

    async def settle_wait(self, ttl: float) -> float:
        """Seconds to wait before taking a free lease, 0 when it is safe now.

        A lease that is free may still be believed held by a replica that has not noticed Redis
        lost it (restart without persistence, FLUSHALL, failover to an empty replica): that holder
        stops at its next renewal, at most one TTL later. So: not while Redis has been up for less
        than a TTL (``INFO server`` uptime, when the user may run INFO), nor within a TTL of a
        replica recording the loss (``mark_lost``)."""
        with redis_errors("check the lease state"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.get(self.lost_key())
                (sec, usec), lost = await pipe.execute()
            wait = 0.0
            if lost is not None:
                now_ms = sec * 1000 + usec // 1000
                wait = max(wait, (int(lost) + ttl * 1000 - now_ms) / 1000)
            try:
                info = await self.client.info("server")
            except aioredis.ResponseError:  # INFO not granted to this user: the marker only
                return wait
            uptime = info.get("uptime_in_seconds")
            if isinstance(uptime, int):
                wait = max(wait, ttl + 1 - uptime)  # uptime counts whole seconds
        return wait

    async def forget_replica(self, replica: str) -> None:
        """Remove the heartbeat at once (clean shutdown: the others rebalance without waiting)."""
        with redis_errors("remove heartbeat"):
            await self.client.delete(self.replica_key(replica))

    async def replicas(self) -> dict[str, dict[str, Any]]:
        """Live replicas: id -> the info of their last heartbeat."""
        pattern = f"{self.prefix}:replica:*"
        head = len(self.prefix) + len(":replica:")
        with redis_errors("list replicas"):
            keys = [k async for k in self.client.scan_iter(match=pattern, count=500)]
            if not keys:
                return {}
            values = await self.client.mget(keys)
        out: dict[str, dict[str, Any]] = {}
        for k, v in zip(keys, values, strict=True):
            if v is None:
                continue
            try:
                info = json.loads(v)
            except ValueError:
                info = {}
            out[_text(k)[head:]] = info if isinstance(info, dict) else {}
        return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _group_order(group: str) -> tuple[int, int]:
    gen, _, idx = group.partition(":")
    return int(gen), int(idx or 0)
