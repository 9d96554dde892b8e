"""`cdcd run` as a real process: Scylla emulator -> PostgreSQL, Redis checkpoints, the operator
endpoint, and SIGTERM (drain, checkpoint, exit 0) then a restart that resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from cdcd.scylla import ScyllaSession

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    await session.execute(
        "CREATE KEYSPACE shop WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    await session.execute(
        "CREATE TABLE shop.orders (id int PRIMARY KEY, status text, total int) WITH cdc = {'enabled': true}"
    )
    try:
        yield session
    finally:
        await session.aclose()


@pytest.fixture
def config(tmp_path: Path, emulator: Any, redis_url: str, redis_prefix: str) -> Iterator[tuple[Path, int]]:
    port = free_port()
    path = tmp_path / "cdcd.toml"
    path.write_text(
        f"""
[instance]
replica = "run-test"
[source]
hosts = ["{emulator.host}:{emulator.port}"]
confidence_window = "300ms"
poll_interval = "50ms"
window = "500ms"
generation_poll = "300ms"
[state]
redis_url = "{redis_url}"
key_prefix = "{redis_prefix}"
checkpoint_interval = "300ms"
[http]
listen = "127.0.0.1:{port}"
admin_token_file = "token"
[pipeline]
shutdown_timeout = "15s"
[pipeline.batch]
max_wait = "50ms"
[destinations.pg]
type = "postgres"
dsn = "${{TEST_PG_DSN}}"
[[tables]]
source = "shop.orders"
destinations = ["pg"]
target = "analytics.orders"
"""
    )
    (tmp_path / "token").write_text("run-token\n")
    yield path, port


def start(path: Path, pg_dsn: str) -> subprocess.Popen[str]:
    """``cdcd run``; its output goes to ``<config dir>/cdcd.log`` (a pipe could fill and block it)."""
    env = {**os.environ, "TEST_PG_DSN": pg_dsn}
    log = (path.parent / "cdcd.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "cdcd", "run", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def http_get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def ready(port: int) -> bool:
    status, _ = await asyncio.to_thread(http_get, port, "/readyz")
    return status == 200


async def until(check: Any, proc: subprocess.Popen[str], limit: float = 60.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"cdcd exited early with {proc.returncode}")
            try:
                if await check():
                    return
            except (OSError, asyncpg.PostgresError):
                pass
            await asyncio.sleep(0.1)


async def rows(pg_dsn: str) -> dict[int, tuple[str, int]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        found = await conn.fetch("SELECT id, status, total FROM analytics.orders")
    finally:
        await conn.close()
    return {r["id"]: (r["status"], r["total"]) for r in found}


def stop(proc: subprocess.Popen[str], path: Path) -> tuple[int, str]:
    """SIGTERM; the exit code and everything cdcd logged."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return proc.returncode, (path.parent / "cdcd.log").read_text()


async def test_run_replicates_drains_on_sigterm_and_resumes(
    scylla: ScyllaSession, config: tuple[Path, int], pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    path, port = config
    proc = start(path, pg_dsn)
    try:
        # A fresh start begins at "now": write once cdcd reports ready.
        await until(lambda: ready(port), proc)
        for i in range(5):
            await scylla.execute(f"INSERT INTO shop.orders (id, status, total) VALUES ({i}, 'new', {i * 10})")
        await scylla.execute("UPDATE shop.orders SET status = 'paid' WHERE id = 1")

        async def replicated() -> bool:
            return await rows(pg_dsn) == {i: ("paid" if i == 1 else "new", i * 10) for i in range(5)}

        await until(replicated, proc)

        status, body = await asyncio.to_thread(http_get, port, "/status")
        assert status == 200 and body["replica"] == "run-test" and body["state"] == "running"
        assert body["tables"]["shop.orders"]["destinations"]["pg"]["events_applied"] == 6
        status, checks = await asyncio.to_thread(http_get, port, "/readyz")
        assert status == 200 and checks["checks"]["destination:pg"]["ok"] is True
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/checkpoints/flush",
            method="POST",
            headers={"Authorization": "Bearer run-token"},
        )
        flushed = await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert flushed.status == 200
    finally:
        code, out = stop(proc, path)
    assert code == 0, out
    messages = [json.loads(line)["message"] for line in out.splitlines() if line.startswith("{")]
    assert "shutting down: draining in-flight batches" in messages
    assert "shutdown complete" in messages
    assert "run-token" not in out and pg_dsn.split("@", maxsplit=1)[0] not in out.replace(
        "postgresql://postgres", ""
    )

    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.keys(f"{redis_prefix}:ckpt:pg:shop.orders:*")
    finally:
        await client.aclose()

    # Changes made while cdcd is down are applied after the restart, once.
    await scylla.execute("UPDATE shop.orders SET total = 999 WHERE id = 4")
    await scylla.execute("DELETE FROM shop.orders WHERE id = 0")
    proc = start(path, pg_dsn)
    try:

        async def caught_up() -> bool:
            now = await rows(pg_dsn)
            return 0 not in now and now.get(4) == ("new", 999)

        await until(caught_up, proc)
        assert await rows(pg_dsn) == {1: ("paid", 10), 2: ("new", 20), 3: ("new", 30), 4: ("new", 999)}
    finally:
        code, out = stop(proc, path)
    assert code == 0, out
