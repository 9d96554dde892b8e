"""CheckpointStore against a real Redis: round trips, atomic group saves, fencing, outages."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cdcd.errors import ConfigError, LeaseLost
from cdcd.events import Position
from cdcd.scylla.generations import StreamGroup
from cdcd.state import CheckpointStore, StateUnavailable
from tests.conftest import free_port

GEN = 1_700_000_000_000
S1, S2, S3 = (bytes([i]) * 16 for i in (1, 2, 3))


def pos(stream: bytes, n: int, generation: int = GEN) -> Position:
    return Position(generation=generation, stream_id=stream, time=uuid.UUID(int=(n << 64) | 0x1000 << 48))


def group(streams: tuple[bytes, ...] = (S1, S2), key: str = "g0", generation: int = GEN) -> StreamGroup:
    return StreamGroup(
        table="ks.t1", generation=generation, end=None, streams=streams, key=f"{generation}:{key}"
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def store(client: aioredis.Redis, redis_prefix: str) -> CheckpointStore:
    return CheckpointStore(client, prefix=redis_prefix)


async def test_load_of_nothing_is_empty(store: CheckpointStore) -> None:
    assert await store.load("pg", group()) == {}
    assert await store.is_done("pg", group()) is False


async def test_save_then_load_round_trips_per_destination(store: CheckpointStore) -> None:
    g = group()
    await store.save("pg", g, {S1: pos(S1, 5), S2: pos(S2, 7)})
    await store.save("ch", g, {S1: pos(S1, 1)})
    assert await store.load("pg", g) == {S1: pos(S1, 5), S2: pos(S2, 7)}
    assert await store.load("ch", g) == {S1: pos(S1, 1)}
    await store.save("pg", g, {S2: pos(S2, 9)})
    assert await store.load("pg", g) == {S1: pos(S1, 5), S2: pos(S2, 9)}


async def test_one_hash_per_generation_survives_regrouping(
    store: CheckpointStore, client: aioredis.Redis
) -> None:
    await store.save("pg", group((S1, S2), "a"), {S1: pos(S1, 3), S2: pos(S2, 4)})
    regrouped = group((S2, S3), "b")
    assert await store.load("pg", regrouped) == {S2: pos(S2, 4)}
    key = store.checkpoint_key("pg", regrouped)
    assert key.endswith(f":ckpt:pg:ks.t1:{GEN}")
    assert await client.hlen(key) == 2


async def test_save_refuses_foreign_streams_and_generations(store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="not in group"):
        await store.save("pg", group(), {S3: pos(S3, 1)})
    with pytest.raises(ValueError, match="generation"):
        await store.save("pg", group(), {S1: pos(S1, 1, generation=GEN + 1)})
    assert await store.load("pg", group()) == {}


async def test_mark_done_covers_every_stream_of_the_group(store: CheckpointStore) -> None:
    await store.mark_done("pg", group((S1, S2)))
    assert await store.is_done("pg", group((S1, S2)))
    assert await store.is_done("pg", group((S1,), "x"))
    assert not await store.is_done("pg", group((S2, S3), "y"))
    assert not await store.is_done("ch", group((S1, S2)))
    await store.forget("pg", group())
    assert not await store.is_done("pg", group((S1, S2)))


def test_unsafe_names_are_refused(client: aioredis.Redis) -> None:
    store = CheckpointStore(client, prefix="cdcd:x")
    with pytest.raises(ConfigError, match="destination 'a:b'"):
        store.checkpoint_key("a:b", group())
    with pytest.raises(ConfigError, match="prefix"):
        CheckpointStore(client, prefix="bad prefix")
    with pytest.raises(ConfigError, match="decode_responses"):
        CheckpointStore(aioredis.Redis(decode_responses=True))


class _Fence:
    def __init__(self, lease_key: str, token: str) -> None:
        self.lease_key = lease_key
        self.token = token

    def lease_for(self, dest: str, group: object) -> tuple[str, str]:
        return self.lease_key, self.token


async def test_fenced_save_writes_only_while_the_lease_is_held(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    lease_key = f"{redis_prefix}:lease:ks.t1:g0"
    store = CheckpointStore(client, prefix=redis_prefix, fence=_Fence(lease_key, "me"))
    await client.set(lease_key, "me")
    await store.save("pg", group(), {S1: pos(S1, 1)})
    await client.set(lease_key, "other-replica")
    with pytest.raises(LeaseLost, match="not held"):
        await store.save("pg", group(), {S1: pos(S1, 2)})
    with pytest.raises(LeaseLost):
        await store.mark_done("pg", group())
    assert await store.load("pg", group()) == {S1: pos(S1, 1)}
    assert not await store.is_done("pg", group())


async def test_script_cache_flush_is_transparent(store: CheckpointStore, client: aioredis.Redis) -> None:
    await store.save("pg", group(), {S1: pos(S1, 1)})
    await client.script_flush()
    await store.save("pg", group(), {S1: pos(S1, 2)})
    assert await store.load("pg", group()) == {S1: pos(S1, 2)}


# ------------------------------------------------------------------------- Redis outage and restart


class _OwnRedis:
    """A redis-server this test may kill -9 and restart (AOF with fsync always)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cdcd-redis-ckpt-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[_OwnRedis]:
    server = _OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_down_is_retriable_and_state_survives_a_restart(own_redis: _OwnRedis) -> None:
    # No client-side retries: the store itself must turn the outage into StateUnavailable.
    client = aioredis.Redis(
        port=own_redis.port, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        store = CheckpointStore(client, prefix="cdcd:test")
        await store.save("pg", group(), {S1: pos(S1, 11), S2: pos(S2, 12)})
        own_redis.kill()
        with pytest.raises(StateUnavailable) as err:
            await store.load("pg", group())
        assert err.value.retriable is True
        with pytest.raises(StateUnavailable):
            await store.save("pg", group(), {S1: pos(S1, 13)})
        own_redis.start()
        assert await store.load("pg", group()) == {S1: pos(S1, 11), S2: pos(S2, 12)}
        await store.save("pg", group(), {S1: pos(S1, 13)})
        assert (await store.load("pg", group()))[S1] == pos(S1, 13)
    finally:
        await client.aclose()
