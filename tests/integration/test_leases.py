"""Leases on a real Redis: ``LeaseStore`` (take, renew, release, epochs, fencing of checkpoint
saves) and ``LeaseCoordinator`` (fair share, hand-over to a new replica, takeover after a
replica dies, stopping before the lease can expire while Redis does not answer, resuming when it
answers again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from cdcd.app.leases import LeaseCoordinator
from cdcd.errors import LeaseLost
from cdcd.events import Position
from cdcd.scylla.generations import StreamGroup
from cdcd.state import CheckpointStore
from cdcd.state.leases import LeaseStore, replica_id
from tests.integration.test_checkpoints import _OwnRedis

GEN = 1_700_000_000_000
S1 = bytes([1]) * 16


def pos(n: int) -> Position:
    return Position(generation=GEN, stream_id=S1, time=uuid.UUID(int=(n << 64) | 0x1000 << 48))


def group(i: int = 0) -> StreamGroup:
    return StreamGroup(table="ks.t", generation=GEN, end=None, streams=(S1,), key=f"{GEN}:{i}")


async def settled(client: aioredis.Redis, ttl: float) -> None:
    """Wait until Redis has been up for a lease TTL: before that no free lease is taken (a
    holder from before a restart may still be working; ``LeaseStore.settle_wait``)."""
    uptime = float((await client.info("server"))["uptime_in_seconds"])
    await asyncio.sleep(max(0.0, ttl + 1.2 - uptime))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    await settled(c, 3.0)
    try:
        yield c
    finally:
        await c.aclose()


async def test_take_renew_release_with_growing_epochs(client: aioredis.Redis, redis_prefix: str) -> None:
    store = LeaseStore(client, prefix=redis_prefix)
    g = group().key
    a = await store.acquire("ks.t", g, "a", 5)
    assert a is not None and a.startswith("1:")
    assert await store.acquire("ks.t", g, "b", 5) is None  # held: nobody else gets it
    assert await store.renew("ks.t", g, a, 5)
    assert not await store.renew("ks.t", g, "9:b", 5)
    assert not await store.release("ks.t", g, "9:b")
    assert await store.release("ks.t", g, a)
    b = await store.acquire("ks.t", g, "b", 5)
    assert b is not None and b.startswith("2:")  # the epoch only grows
    assert not await store.renew("ks.t", g, a, 5)  # the old holder's token is dead
    [info] = await store.leases()
    assert (info.table, info.group, info.epoch, info.owner) == ("ks.t", g, 2, "b")
    assert 4 < info.expires_in <= 5
    await client.pexpire(store.lease_key("ks.t", g), 50)
    await asyncio.sleep(0.1)
    c = await store.acquire("ks.t", g, "c", 5)  # expired: free again, next epoch
    assert c is not None and c.startswith("3:")
    with pytest.raises(ValueError, match="group key"):
        store.lease_key("ks.t", "g0")


async def test_checkpoints_are_fenced_by_the_coordinators_lease(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A replica whose lease was taken over cannot save a checkpoint any more."""
    store = LeaseStore(client, prefix=redis_prefix)
    one = LeaseCoordinator(store, replica="one", name="one", ttl=3, fingerprint="f")
    ckpt = CheckpointStore(client, prefix=redis_prefix, fence=one)
    with pytest.raises(LeaseLost):
        await ckpt.save("pg", group(), {S1: pos(1)})  # no lease yet
    one.want("ks.t", group().key)
    await one.step()
    await one.step()
    assert ("ks.t", group().key) in one.holds
    await ckpt.save("pg", group(), {S1: pos(2)})
    # another replica takes the lease over (as after an expiry)
    await client.delete(store.lease_key("ks.t", group().key))
    assert await store.acquire("ks.t", group().key, "two", 3) is not None
    # the old holder still believes it holds it until its next renewal: Redis refuses the save
    with pytest.raises(LeaseLost):
        await ckpt.save("pg", group(), {S1: pos(3)})
    assert (await ckpt.load("pg", group()))[S1] == pos(2)
    # the daemon reports the refused save: the hold ends at once, not at the next renewal, so no
    # branch of the group starts again under it
    hold = one.holds[("ks.t", group().key)]
    one.fenced("ks.t", group().key, hold)
    assert hold.lost.is_set() and one.holds == {}
    await one.step()  # the renewal has nothing left to renew
    assert one.holds == {}


class _Replica:
    """A coordinator running its loop, wanting the same groups as every other replica."""

    def __init__(self, store: LeaseStore, groups: int, ttl: float = 3.0) -> None:
        self.id = replica_id("t")
        self.coord = LeaseCoordinator(store, replica=self.id, name="t", ttl=ttl, fingerprint="f",
                                      handover_timeout=2.0)  # fmt: skip
        for i in range(groups):
            self.coord.want("ks.t", group(i).key)
        self.task = asyncio.create_task(self.coord.run())

    def held(self) -> set[str]:
        return {g for (_, g), h in self.coord.holds.items() if not h.lost.is_set()}

    async def kill(self) -> None:
        """As kill -9: stop without releasing anything or removing the heartbeat."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def stop(self) -> None:
        await self.kill()
        await self.coord.close()


async def _until(check: Callable[[], bool], limit: float, what: str) -> float:
    """Seconds until ``check()`` holds (AssertionError after ``limit``)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {limit} s")


@pytest.mark.slow  # ~20 s
async def test_fair_share_hand_over_and_takeover(client: aioredis.Redis, redis_prefix: str) -> None:
    store = LeaseStore(client, prefix=redis_prefix)
    groups = 6
    overlaps: list[str] = []
    replicas = [_Replica(store, groups), _Replica(store, groups)]

    async def watch() -> None:  # never one group in two replicas
        while True:
            seen: dict[str, int] = {}
            for r in replicas:
                if not r.task.done():
                    for g in r.held():
                        seen[g] = seen.get(g, 0) + 1
            overlaps.extend(g for g, n in seen.items() if n > 1)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        await _until(lambda: sorted(len(r.held()) for r in replicas) == [3, 3], 15, "3 + 3 groups")
        replicas.append(_Replica(store, groups))  # a new replica: the others hand groups over
        took = await _until(
            lambda: sorted(len(r.held()) for r in replicas) == [2, 2, 2], 15, "2 + 2 + 2 groups"
        )
        assert took < 10
        victim = replicas[0]
        lost = victim.held()
        await victim.kill()  # its leases stay in Redis until they expire
        survivors = replicas[1:]
        took = await _until(
            lambda: (
                set().union(*(r.held() for r in survivors)) >= lost
                and sorted(len(r.held()) for r in survivors) == [3, 3]
            ),
            15,
            "takeover",
        )
        assert took < 3 * 3.0 + 2  # TTL, heartbeat expiry and a couple of ticks
        assert not overlaps, f"groups held twice at once: {sorted(set(overlaps))}"
    finally:
        watcher.cancel()
        for r in replicas:
            await r.stop()
    assert await store.leases() == []  # released on a clean stop


@pytest.mark.slow  # ~15 s
async def test_work_stops_before_the_lease_can_expire_and_resumes_after_redis_returns() -> None:
    server = _OwnRedis()
    server.start()
    client = aioredis.Redis(port=server.port, socket_connect_timeout=0.5, socket_timeout=0.5)
    replica: _Replica | None = None
    try:
        store = LeaseStore(client, prefix="cdcd:t")
        replica = _Replica(store, 2, ttl=3.0)
        await _until(lambda: len(replica.held()) == 2, 10, "both leases")
        holds = list(replica.coord.holds.values())
        before = {(h.table, h.group): h.epoch for h in holds}
        # Redis stops answering (as in a network partition): renewals time out
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        stopped = await _until(lambda: all(h.lost.is_set() for h in holds), 5, "work stopped")
        # renewed at most `tick` before the freeze: the lease lives until at least that + TTL
        assert stopped < 3.0 - 1.0 + 0.3, f"stopped {stopped:.2f} s after the freeze"
        assert replica.coord.holds == {}
        with pytest.raises(LeaseLost):
            replica.coord.lease_for("pg", group(0))
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - frozen)))
        os.kill(server.proc.pid, signal.SIGCONT)
        back = await _until(lambda: len(replica.held()) == 2, 20, "leases taken again")
        assert back < 15
        after = {gid: h.epoch for gid, h in replica.coord.holds.items()}
        assert all(after[gid] > epoch for gid, epoch in before.items())  # new epochs: old tokens are dead
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        if replica is not None:
            await replica.stop()
        await client.aclose()
        server.stop()


async def test_cdcd_status_prints_replicas_owners_lag_and_unowned(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """``cdcd status`` reads the cluster from Redis only (heartbeats and leases)."""
    import io

    from cdcd.app.cluster import print_status
    from cdcd.app.reload import fingerprint
    from cdcd.config import loads

    cfg = loads(
        f'[state]\nredis_url = "{redis_url}"\nkey_prefix = "{redis_prefix}"\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG}"\n'
        '[[tables]]\nsource = "ks.t"\ndestinations = ["pg"]\n',
        env={"PG": "postgresql://u@127.0.0.1/db"},
    )
    store = LeaseStore(client, prefix=redis_prefix)
    a, b = group(0).key, group(1).key
    token = await store.acquire("ks.t", a, "r1", 10)
    assert token is not None
    now = time.time()
    await store.heartbeat("r1", {"name": "one", "fingerprint": fingerprint(cfg), "started_at": now, "at": now,
                                 "held": [{"table": "ks.t", "group": a, "epoch": 1, "lags": {"pg": 1.5}}],
                                 "wanted": [f"ks.t {a}", f"ks.t {b}"]}, 10)  # fmt: skip
    await store.heartbeat("r2", {"name": "two", "fingerprint": "other", "started_at": now, "at": now,
                                 "held": [], "wanted": [f"ks.t {a}", f"ks.t {b}"]}, 10)  # fmt: skip
    out = io.StringIO()
    assert await asyncio.to_thread(print_status, cfg, out=out) == 0
    text = out.getvalue()
    assert "replicas (2):" in text
    assert "r2  name=two  leases=0  config=other" in text and "CONFIG DIFFERS" in text
    assert f"ks.t {a}  owner=r1  epoch=1" in text and "lag: pg=1.5s" in text
    assert f"unowned groups (1):\n  ks.t {b}" in text
    # the per-table view: one group running (lag 1.5 s), one unowned
    assert re.search(r"^ks\.t\s+pg\s+1\s+1\s+1\.5s$", text, re.M), text
    # --watch: the same view again every interval (here two rounds, not on a terminal)
    from cdcd.app.cluster import watch_status

    out = io.StringIO()
    assert await asyncio.to_thread(watch_status, cfg, interval=0.1, out=out, rounds=2) == 0
    frames = out.getvalue().split("--- ")
    assert len(frames) == 3 and all("replicas (2):" in f for f in frames[1:])


async def test_a_restarted_replica_takes_over_its_dead_predecessors_leases_at_once(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Same name, same kernel and pid namespace, pid gone: no waiting for the lease TTL. A
    predecessor whose pid still exists, or another replica name, is waited for."""
    from cdcd.state.leases import host_identity

    store = LeaseStore(client, prefix=redis_prefix)
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    here = host_identity()
    cases = {  # group index -> (name, pid) of the holder
        0: ("same", dead.pid),  # our previous process: taken over
        1: ("same", os.getppid()),  # alive: wait
        2: ("other", dead.pid),  # another replica's process: wait (as on another machine)
    }
    for i, (name, pid) in cases.items():
        owner = f"{name}.{pid}.x{i}"
        assert await store.acquire("ks.t", group(i).key, owner, 60) is not None
        await store.heartbeat(owner, {"name": name, "host": {**here, "pid": pid}, "held": [{}]}, 60)
    coord = LeaseCoordinator(store, replica=replica_id("same"), name="same", ttl=60, fingerprint="f")
    for i in cases:
        coord.want("ks.t", group(i).key)
    await coord.step()
    await coord.step()
    assert set(coord.holds) == {("ks.t", group(0).key)}
    assert coord.holds[("ks.t", group(0).key)].epoch == 2
    assert set(await store.replicas()) == {f"same.{os.getppid()}.x1", f"other.{dead.pid}.x2", coord.replica}
    await coord.close()


@pytest.mark.slow  # ~15 s
@pytest.mark.parametrize("loss", ["restart", "flushall"])
async def test_no_free_lease_is_taken_within_a_ttl_of_redis_losing_its_state(loss: str) -> None:
    """Redis restarts empty (or is flushed) while a replica holds every group, and a new replica
    starts right then (a restarted process knows nothing of the loss). The holder only notices at
    its next renewal, so nobody may take the now free leases before one TTL has passed: not the
    new replica (Redis uptime; the loss recorded by the holder), not the holder itself."""
    ttl = 3.0
    server = _OwnRedis()
    server.start()
    client = aioredis.Redis(port=server.port, socket_connect_timeout=0.5, socket_timeout=0.5)
    store = LeaseStore(client, prefix="cdcd:t")
    replicas: list[_Replica] = []
    overlaps: set[str] = set()
    taken: list[float] = []  # when a lease was first held after the loss

    async def watch(old: _Replica, new: _Replica, since: float) -> None:
        before = {id(h) for h in old.coord.holds.values()}  # the holds from before the loss
        while True:
            overlaps.update(old.held() & new.held())
            fresh = [h for r in (old, new) for h in r.coord.holds.values() if id(h) not in before]
            if fresh and not taken:
                taken.append(time.monotonic() - since)
            await asyncio.sleep(0.02)

    try:
        await settled(client, ttl)
        old = _Replica(store, 2, ttl=ttl)
        replicas.append(old)
        await _until(lambda: len(old.held()) == 2, 10, "both leases")
        if loss == "restart":  # without persistence: the AOF goes with it
            server.kill()
            shutil.rmtree(server.dir)
            os.makedirs(server.dir)
            server.start()
        else:
            await client.flushall()
        lost_at = time.monotonic()
        new = _Replica(store, 2, ttl=ttl)
        replicas.append(new)
        watcher = asyncio.create_task(watch(old, new, lost_at))
        try:
            await _until(lambda: not old.held(), 5, "the old holder noticed")
            await _until(lambda: len(old.held() | new.held()) == 2, 20, "both groups held again")
        finally:
            watcher.cancel()
        assert taken and taken[0] >= ttl - 0.3, f"a free lease was taken {taken} s after Redis lost its state"
        assert not overlaps, f"held by both replicas at once: {overlaps}"
    finally:
        for r in replicas:
            await r.stop()
        await client.aclose()
        server.stop()
