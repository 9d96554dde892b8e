"""`cdcd run` as a real process and two signals: the second makes it exit at once (code 1)
without a traceback in stdout or stderr, whether it arrives while the first one's drain runs or
after the shutdown completed, while the process winds down (it used to be killed by the signal,
or end with a ``KeyboardInterrupt``/``RuntimeError: Event loop is closed`` traceback)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cdcd.scylla import ScyllaSession
from tests.integration.test_http_run import config, ready, scylla  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def run(path: Path, pg_dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cdcd", "run", "--config", str(path)],
        cwd=ROOT,
        env={**os.environ, "TEST_PG_DSN": pg_dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def until_ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if await ready(port):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("cdcd did not become ready")


def read_until(proc: subprocess.Popen[str], message: str) -> list[str]:
    """stderr lines up to and including the JSON record with ``message``."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("{") and json.loads(line).get("message") == message:
            return lines
    raise AssertionError(f"no {message!r} in {''.join(lines)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["while draining", "after shutdown complete"])
async def test_a_second_signal_exits_at_once_without_a_traceback(
    config: tuple[Path, int],  # noqa: F811
    scylla: ScyllaSession,  # noqa: F811
    pg_dsn: str,
    sig: signal.Signals,
    when: str,
) -> None:
    path, port = config
    proc = run(path, pg_dsn)
    pg = await asyncpg.connect(pg_dsn)
    lock = pg.transaction()
    try:
        await until_ready(proc, port)
        await scylla.execute("INSERT INTO shop.orders (id, status, total) VALUES (1, 'new', 10)")

        async def replicated() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM analytics.orders"))

        async with asyncio.timeout(30):
            while not await replicated():  # noqa: ASYNC110 (polling the destination)
                await asyncio.sleep(0.05)
        if when == "while draining":  # the next write waits on the lock: the drain cannot finish
            await lock.start()
            await pg.execute("LOCK TABLE analytics.orders IN ACCESS EXCLUSIVE MODE")
            await scylla.execute("INSERT INTO shop.orders (id, status, total) VALUES (2, 'new', 20)")
            async with asyncio.timeout(30):
                while not await pg.fetchval(  # noqa: ASYNC110
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'analytics.orders'::regclass"
                ):
                    await asyncio.sleep(0.05)
        proc.send_signal(sig)
        # the second signal once the first is handled: in the drain, or after "shutdown complete"
        # while the process winds down (event loop teardown, driver threads)
        early = await asyncio.to_thread(
            read_until,
            proc,
            "shutdown complete"
            if when == "after shutdown complete"
            else "shutting down: draining in-flight batches",
        )
        proc.send_signal(sig)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if when == "while draining":
            await lock.rollback()
        await pg.close()
    err = "".join(early) + err
    if when == "after shutdown complete":
        # The wind-down may end before the second signal lands (exit 0); what it must never do
        # is die of the signal (-15, -2) or print a traceback.
        assert proc.returncode in (0, 1), (proc.returncode, out, err)
    else:
        assert proc.returncode == 1, (proc.returncode, out, err)
    both = out + err
    assert "Traceback" not in both, both
    assert "Event loop is closed" not in both and "KeyboardInterrupt" not in both, both
    assert not [line for line in err.splitlines() if line and not line.startswith("{")], err
    records: list[dict[str, Any]] = [json.loads(line) for line in err.splitlines()]
    messages = [r["message"] for r in records]
    assert "shutting down: draining in-flight batches" in messages
    if when == "while draining":
        assert "second signal: exiting without draining" in messages
    else:
        assert messages[-1] == "shutdown complete", messages
