"""``LeaseCoordinator``: which (table, stream group) this replica works on (R-50).

The unit of work is a (table, stream group): its ``SharedReader`` and every destination's
``Branch``. Replicas share the groups through leases in Redis (``cdcd.state.leases``):

* **Demand.** The daemon's supervisors say which groups they want run (``want``/``unwant``,
  counted per destination); every replica runs the same config, so every replica wants the same
  groups. A destination branch waits in ``hold_for`` until this replica holds the group's lease.
* **Heartbeat.** Every ``tick`` (TTL / 3) the replica writes its heartbeat (TTL: the lease TTL)
  with its id, config fingerprint, held leases and their lag; live replicas are those whose
  heartbeat has not expired.
* **Fair share.** With G wanted groups and N live replicas each replica aims at
  ``ceil(G / N)``: it takes free leases while below it and hands groups over while above it
  (and one more when another replica holds fewer than ``floor(G / N)``: the one holding most
  gives). A replica between floor and ceil takes a free group only after it stayed free for a
  whole tick and no replica below floor is seen, so replicas with less get there first.
* **Hand-over** (``release`` set on the hold): the group's branches drain, save their final
  checkpoint and stop; then the lease is deleted, for another replica to take. Bounded by
  ``handover_timeout``; the rest is abandoned (kept in the log, replayed by the next owner).
* **Renewal and loss.** Held leases are renewed every tick. A hold whose lease was not renewed
  stops its work ``margin`` seconds *before* the lease can expire in Redis (deadline counted from
  when the last successful renewal was sent), so two replicas never run one group at once, even
  when this one is cut off from Redis. A renewal that finds another token (the lease was taken
  over, or Redis lost its data) stops the work at once. Checkpoints are fenced by the token
  (``lease_for``: this coordinator is the ``CheckpointStore``'s ``Fence``).
* **Restart after kill -9.** A replica whose heartbeat names the same replica name, kernel boot
  id and pid namespace as this process, and whose pid no longer exists, is this replica's
  previous process: its heartbeat is removed and its leases are taken over at once (a Lua swap
  from its token to a new epoch) instead of after they expire. Anything uncertain (another
  name, another host or container, a pid that exists) waits for the expiry.
* **Redis lost its state** (restart without persistence, FLUSHALL, failover to an empty
  replica): holders notice at their next renewal, at most a TTL later. Until then a free lease
  may still be worked on, so no replica takes one before Redis has been up for a TTL, nor within
  a TTL of a replica finding its own heartbeat gone (``LeaseStore.settle_wait``).
* **Redis down.** Nothing can be renewed: every group stops before its lease expires; when Redis
  answers again, leases are taken again at the next ticks (after two heartbeats, so the other
  replicas are seen first) and work resumes from the checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from cdcd.errors import LeaseLost
from cdcd.ops import emit
from cdcd.ops.logging import get_logger, scrub
from cdcd.state.checkpoints import GroupRef
from cdcd.state.leases import LeaseStore, epoch_of, gone_here, host_identity

__all__ = ["Hold", "LeaseCoordinator"]

log = get_logger("cdcd.leases")

GroupId = tuple[str, str]  # (table, group key)


class Hold:
    """This replica's lease on one group. ``lost``: stop at once; ``release``: hand over."""

    def __init__(self, table: str, group: str, token: str, deadline: float) -> None:
        self.table = table
        self.group = group
        self.token = token
        self.epoch = epoch_of(token)
        self.acquired_at = time.time()
        self.deadline = deadline  # monotonic: stop work by then unless renewed
        self.lost = asyncio.Event()
        self.release = asyncio.Event()
        self.users = 0  # destination branches running under this hold
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def ending(self) -> bool:
        return self.lost.is_set() or self.release.is_set()

    def enter(self) -> None:
        self.users += 1
        self.idle.clear()

    def leave(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            self.idle.set()


class LeaseCoordinator:
    """Takes, renews, hands over and gives up leases for this replica. See the module docstring."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        replica: str,
        name: str,
        ttl: float,
        fingerprint: str,
        lags: Callable[[], Mapping[tuple[str, str, str], float | None]] = dict,
        handover_timeout: float = 20.0,
    ) -> None:
        self.store = store
        self.replica = replica  # unique id of this process
        self.name = name  # configured replica name
        self.ttl = ttl
        self.tick = ttl / 3
        self.margin = max(1.0, ttl / 4)
        self.fingerprint = fingerprint
        self.lags = lags  # (table, group, destination) -> lag of this replica's branches
        self.handover_timeout = handover_timeout
        self.started_at = time.time()
        self.holds: dict[GroupId, Hold] = {}
        self.demand: dict[GroupId, int] = {}
        self.replicas: dict[str, dict[str, Any]] = {}  # last seen live replicas (id -> heartbeat)
        self.mismatched: list[str] = []  # replica ids running another config
        self._warned: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()  # a hold was taken or ended
        self._free_since: dict[GroupId, int] = {}  # group -> tick number it was first seen free
        self._ticks = 0
        self._beats_ok = 0  # consecutive successful heartbeats
        self._releasing: set[GroupId] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.host = host_identity()
        self._gone: set[str] = set()  # replicas of this host known dead (kill -9, then restarted)
        self._last_beat: float | None = None  # monotonic time of the last successful heartbeat
        self._quiet_until = 0.0  # after Redis lost its state: no new lease before this
        self._settle_logged = 0.0  # (monotonic) until when the settle wait was last logged

    # ------------------------------------------------------------------------------- the fence

    def lease_for(self, dest: str, group: GroupRef) -> tuple[str, str] | None:
        """``Fence`` of the checkpoint store: the lease key and token, or LeaseLost."""
        hold = self.holds.get((group.table, group.key))
        if hold is None or hold.lost.is_set() or time.monotonic() >= hold.deadline:
            raise LeaseLost(f"{dest} {group.table} group {group.key}: this replica holds no lease on it")
        return self.store.lease_key(group.table, group.key), hold.token

    # ---------------------------------------------------------------------------------- demand

    def want(self, table: str, group: str) -> None:
        self.demand[(table, group)] = self.demand.get((table, group), 0) + 1

    def unwant(self, table: str, group: str) -> None:
        gid = (table, group)
        left = self.demand.get(gid, 0) - 1
        if left > 0:
            self.demand[gid] = left
        else:
            self.demand.pop(gid, None)

    async def hold_for(self, table: str, group: str, poll: float = 2.0) -> Hold:
        """Wait until this replica holds a live lease on the group (the caller has ``want``-ed
        it). Returns every ``poll`` seconds at the latest by raising TimeoutError, so the caller
        can check whether the group got done elsewhere meanwhile."""
        gid = (table, group)
        async with asyncio.timeout(poll):
            while True:
                hold = self.holds.get(gid)
                if hold is not None and not hold.ending:
                    return hold
                self._changed.clear()
                await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Heartbeat, renew, balance; every ``tick`` until cancelled. A watchdog ends holds
        that could not be renewed before their leases can expire."""
        watchdog = asyncio.create_task(self._watchdog(), name="lease-watchdog")
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.step()
                except Exception as exc:  # Redis trouble: the watchdog stops what cannot be renewed
                    log.warning("lease round failed", error=scrub(f"{type(exc).__name__}: {exc}"))
                    self._beats_ok = 0
                # the first round is followed soon by a second: the others' heartbeats (refreshed
                # every tick, kept for a TTL) are seen by then, so a restart resumes quickly
                pause = min(1.0, self.tick) if self._ticks == 1 else self.tick
                await asyncio.sleep(max(0.05, pause - (time.monotonic() - started)))
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def step(self) -> None:
        """One round: heartbeat, renew every hold, read who is live, then take or give."""
        self._ticks += 1
        await asyncio.wait_for(self._heartbeat(), self.tick)
        self._beats_ok += 1
        await self._renew_all()
        replicas = await asyncio.wait_for(self.store.replicas(), self.tick)
        for r, info in list(replicas.items()):
            if (
                r != self.replica
                and info.get("name") == self.name
                and gone_here(self.host, info.get("host") or {})
            ):
                # this replica's previous process, gone (killed with -9 and restarted as this
                # one): its leases are taken over without waiting for them to expire
                del replicas[r]
                if r not in self._gone:
                    self._gone.add(r)
                    log.info("a replica on this host is gone; taking its leases over", replica=r)
                await self.store.forget_replica(r)
        replicas.setdefault(self.replica, self._info())
        self.replicas = replicas
        self._check_configs(replicas)
        if self.stopping:
            return
        await self._balance(replicas)

    async def _heartbeat(self) -> None:
        beat_at = time.monotonic()
        kept = await self.store.heartbeat(self.replica, self._info(), self.ttl)
        if not kept and self._last_beat is not None and beat_at - self._last_beat < self.ttl:
            # Our heartbeat vanished before its TTL: Redis lost its state (restart without
            # persistence, FLUSHALL, failover). Leases of other replicas vanished with it, though
            # their holders may still be working until they notice: take no free lease for a
            # whole TTL, so nobody's work can overlap ours (they stop before their lease ends).
            # Recorded in Redis too, for replicas that started meanwhile and cannot tell.
            self._quiet_until = beat_at + self.ttl
            log.warning("Redis lost the lease state; taking no lease for one lease TTL", ttl_s=self.ttl)
            await self.store.mark_lost(self.ttl)
        self._last_beat = beat_at

    def _info(self) -> dict[str, Any]:
        lags = self.lags()
        held = []
        for (table, group), hold in sorted(self.holds.items()):
            held.append({
                "table": table, "group": group, "epoch": hold.epoch,
                "lags": {d: lag for (t, g, d), lag in lags.items() if t == table and g == group},
            })  # fmt: skip
        return {
            "name": self.name, "fingerprint": self.fingerprint, "started_at": self.started_at, "host": self.host,
            "at": time.time(), "held": held, "wanted": [f"{t} {g}" for t, g in sorted(self.demand)],
        }  # fmt: skip

    async def _renew_all(self) -> None:
        async def renew(gid: GroupId, hold: Hold) -> None:
            sent = time.monotonic()
            try:
                ok = await asyncio.wait_for(self.store.renew(gid[0], gid[1], hold.token, self.ttl), self.tick)
            except Exception as exc:
                log.debug("lease renewal failed", table=gid[0], group=gid[1], error=scrub(repr(exc)))
                return  # the watchdog stops it in time if this goes on
            if ok:
                hold.deadline = max(hold.deadline, sent + self.ttl - self.margin)
            else:
                self._lose(gid, hold, "taken over or gone from Redis")

        await asyncio.gather(*(renew(gid, h) for gid, h in list(self.holds.items()) if not h.lost.is_set()))

    async def _watchdog(self) -> None:
        while True:
            now = time.monotonic()
            for gid, hold in list(self.holds.items()):
                if now >= hold.deadline and not hold.lost.is_set():
                    self._lose(gid, hold, "not renewed in time")
            await asyncio.sleep(0.2)

    def fenced(self, table: str, group: str, hold: Hold) -> None:
        """A checkpoint save under ``hold`` was refused (the lease is gone from Redis or another
        replica's): the hold ends now, for every destination of the group, instead of at the
        next renewal; no branch starts again under it."""
        if self.holds.get((table, group)) is hold and not hold.lost.is_set():
            # the fence also refuses a hold past its deadline (Redis unreachable): say which
            expired = time.monotonic() >= hold.deadline
            reason = "not renewed in time" if expired else "a checkpoint save found the lease gone from Redis"
            self._lose((table, group), hold, reason)

    def _lose(self, gid: GroupId, hold: Hold, reason: str) -> None:
        hold.lost.set()
        if self.holds.get(gid) is hold:
            del self.holds[gid]
        emit.lease_lost(table=gid[0], group=gid[1], epoch=hold.epoch, reason=reason)
        self._signal()

    def _check_configs(self, replicas: Mapping[str, Mapping[str, Any]]) -> None:
        self.mismatched = sorted(
            r for r, info in replicas.items() if info.get("fingerprint") not in (None, self.fingerprint)
        )
        for r in self.mismatched:
            theirs = str(replicas[r].get("fingerprint"))
            if (r, theirs) not in self._warned:
                self._warned.add((r, theirs))
                log.warning(
                    "replicas run different configurations", replica=r, theirs=theirs, ours=self.fingerprint
                )

    # ------------------------------------------------------------------------------- balancing

    def share(self, replicas: int | None = None) -> tuple[int, int]:
        """(floor, ceil) of the wanted groups over the live replicas."""
        n = max(1, replicas if replicas is not None else len(self.replicas))
        wanted = len(self.demand)
        return wanted // n, math.ceil(wanted / n)

    async def _balance(self, replicas: Mapping[str, Mapping[str, Any]]) -> None:
        lo, hi = self.share(len(replicas))
        mine = [gid for gid, h in self.holds.items() if not h.ending]
        # groups held but no longer wanted here (done, or their table was removed): give them up
        for gid in [g for g in mine if g not in self.demand]:
            self._hand_over(gid, "not wanted")
        mine = [g for g in mine if g in self.demand]
        counts = {r: len(info.get("held") or ()) for r, info in replicas.items()}
        counts[self.replica] = len(mine)
        extra = len(mine) - hi
        if extra <= 0 and len(mine) > lo and any(c < lo for c in counts.values()):
            most = max(counts.values())
            if len(mine) == most and min(r for r, c in counts.items() if c == most) == self.replica:
                extra = 1  # someone holds less than the floor: the one holding most gives one
        if extra > 0:
            for gid in sorted(mine, key=_newest_first)[:extra]:
                self._hand_over(gid, "rebalance")
            emit.lease_rebalanced(held=len(mine), share=hi, replicas=len(replicas))
            return
        if self._beats_ok < 2 or self._releasing or time.monotonic() < self._quiet_until:
            return  # just (re)connected: see the other replicas first; still handing over; or
            # Redis lost its state a moment ago (see _heartbeat)
        room = hi - len(mine)
        if room <= 0:
            return
        leases = {(x.table, x.group): x for x in await self.store.leases()}
        starved = any(c < lo for r, c in counts.items() if r != self.replica)
        settled: bool | None = None  # may free leases be taken (``_settled``), asked once
        for gid in sorted(self.demand):
            if room <= 0:
                break
            held = leases.get(gid)
            dead = held is not None and held.owner in self._gone
            if gid in self.holds or (held is not None and not dead):
                self._free_since.pop(gid, None)
                continue
            first = self._free_since.setdefault(gid, self._ticks)
            if len(mine) >= lo and (starved or first == self._ticks):
                continue  # between floor and ceil: leave it a tick for replicas with less
            if held is not None:
                token = await self.store.take_over(
                    gid[0], gid[1], f"{held.epoch}:{held.owner}", self.replica, self.ttl
                )
            else:
                if settled is None:
                    settled = await self._settled()
                if not settled:
                    continue  # a dead predecessor's leases may still be taken over
                token = await self.store.acquire(gid[0], gid[1], self.replica, self.ttl)
            if token is None:
                continue
            sent = time.monotonic()
            self.holds[gid] = Hold(gid[0], gid[1], token, sent + self.ttl - self.margin)
            self._free_since.pop(gid, None)
            mine.append(gid)
            room -= 1
            emit.lease_acquired(table=gid[0], group=gid[1], epoch=epoch_of(token))
            self._signal()
        for gid in list(self._free_since):
            if gid not in self.demand:
                del self._free_since[gid]

    async def _settled(self) -> bool:
        """May a free lease be taken now? Not within a lease TTL of Redis losing its state (see
        ``LeaseStore.settle_wait``): a holder that has not noticed may still be working."""
        wait = await self.store.settle_wait(self.ttl)
        if wait <= 0:
            return True
        now = time.monotonic()
        if now >= self._settle_logged:
            self._settle_logged = now + wait
            log.info(
                "Redis started or lost its state less than one lease TTL ago; taking free leases "
                "once any earlier holder has stopped", wait_s=round(wait, 1),
            )  # fmt: skip
        return False

    def _hand_over(self, gid: GroupId, reason: str) -> None:
        """Ask the group's branches to drain and checkpoint, then release the lease."""
        hold = self.holds.get(gid)
        if hold is None or hold.ending:
            return
        hold.release.set()
        self._releasing.add(gid)
        self._signal()
        task = asyncio.create_task(self._finish_hand_over(gid, hold, reason), name=f"handover:{gid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_hand_over(self, gid: GroupId, hold: Hold, reason: str) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.idle.wait(), self.handover_timeout)
            await self._release(gid, hold, reason)
        finally:
            self._releasing.discard(gid)

    async def _release(self, gid: GroupId, hold: Hold, reason: str) -> None:
        if self.holds.get(gid) is not hold:
            return  # lost meanwhile (already counted and logged)
        hold.lost.set()  # whatever still runs under it stops now (nothing may save any more)
        del self.holds[gid]
        try:
            await self.store.release(gid[0], gid[1], hold.token)
        except Exception as exc:  # it expires on its own
            log.debug("lease release failed", table=gid[0], group=gid[1], error=scrub(repr(exc)))
        emit.lease_released(table=gid[0], group=gid[1], epoch=hold.epoch, reason=reason)
        self._signal()

    async def close(self, within: float = 5.0) -> None:
        """Shutdown (after the branches stopped): release every lease, remove the heartbeat."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(within):
                for gid, hold in list(self.holds.items()):
                    await self._release(gid, hold, "shutdown")
                await self.store.forget_replica(self.replica)

    # ---------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """For /status: this replica's leases and the replicas it sees."""
        now = time.monotonic()
        leases = [
            {"table": t, "group": g, "epoch": h.epoch, "acquired_at": h.acquired_at,
             "expires_in": round(max(0.0, h.deadline + self.margin - now), 2),
             "state": "handing-over" if h.release.is_set() else "held"}
            for (t, g), h in sorted(self.holds.items())
        ]  # fmt: skip
        lo, hi = self.share()
        return {
            "replica_id": self.replica,
            "config_fingerprint": self.fingerprint,
            "lease_ttl_seconds": self.ttl,
            "share": {"wanted_groups": len(self.demand), "floor": lo, "ceil": hi},
            "leases": leases,
            "replicas": {r: self._replica_view(r, info) for r, info in sorted(self.replicas.items())},
            "config_mismatch": list(self.mismatched),
        }

    def _replica_view(self, r: str, info: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": info.get("name"),
            "held": len(info.get("held") or ()),
            "fingerprint": info.get("fingerprint"),
            "config_matches": r not in self.mismatched,
        }


def _newest_first(gid: GroupId) -> tuple[int, int]:
    """Hand over the newest generations' groups first (an old generation is nearly done)."""
    gen, _, idx = gid[1].partition(":")
    return -int(gen), -int(idx or 0)
