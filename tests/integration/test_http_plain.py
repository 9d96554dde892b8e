"""/readyz details and /status as a person reads them, through the whole daemon (Scylla emulator,
Redis, an in-memory destination) and its real HTTP endpoint: plain text instead of Python
reprs, and /status without per-stream positions unless ``?verbose=true``."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import aiohttp
import pytest

from cdcd.app.deps import plain, timed
from cdcd.errors import SinkUnavailable
from cdcd.ops.logging import configure
from cdcd.scylla import ScyllaSession
from tests.integration.test_http_daemon import (
    MemorySink,
    Running,
    free_port,
    get_json,
    make_config,
    scylla,  # noqa: F401 (the fixture creating ks.t)
    until,
)


class FailingHealthSink(MemorySink):
    """Once ``failing``, its health check fails the way a real sink reports it."""

    failing = False

    async def healthcheck(self) -> None:
        if not self.failing:
            return
        raise SinkUnavailable(
            'mem: PostgreSQL at 127.0.0.1:5432/db (user u): password authentication failed for user "u"'
        )


async def get_text(path: str, url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        return r.status, await r.text()


async def test_readyz_details_are_plain_text(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811 (the fixture imported above)
    redis_url: str,
    redis_prefix: str,
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    async with Running(cfg, MemorySink("mem")) as run:

        async def replicating() -> bool:
            status, _ = await get_json("/readyz", run.url)
            return bool(status == 200)

        await until(replicating)
        status, body = await get_json("/readyz", run.url)
        assert status == 200 and body["ready"] is True
        details = {name: check["detail"] for name, check in body["checks"].items()}
        assert details == {
            "daemon": "running; replicating 1 of 1 table destinations",
            "redis": "ok",
            "scylla": "release 3.0.8",
            "destination:mem": "ok",
        }
        _, text = await get_text("/readyz", run.url)
        for python in ("True", "[{", "{'", "None"):
            assert python not in text, text
        assert await run.stop() == 0


async def test_readyz_names_the_failure_without_the_python_class(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811
    redis_url: str,
    redis_prefix: str,
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    sink = FailingHealthSink("mem")
    async with Running(cfg, sink) as run:
        sink.failing = True
        run.daemon._ready_cache = None  # (answers are cached for 2 s)
        status, body = await get_json("/readyz", run.url)
        assert status == 503 and body["ready"] is False
        assert body["checks"]["destination:mem"]["detail"] == (
            'mem: PostgreSQL at 127.0.0.1:5432/db (user u): password authentication failed for user "u"'
        )
        assert await run.stop() == 0


async def test_status_is_a_summary_unless_verbose(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811
    redis_url: str,
    redis_prefix: str,
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    sink = MemorySink("mem")
    async with Running(cfg, sink) as run:
        for i in range(20):
            await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'v{i}')")

        async def replicated() -> bool:
            return len(sink.rows) == 20

        await until(replicated)
        _, short_text = await get_text("/status", run.url)
        _, long_text = await get_text("/status?verbose=true", run.url)
        short, full = json.loads(short_text), json.loads(long_text)
        dest, full_dest = (b["tables"]["ks.t"]["destinations"]["mem"] for b in (short, full))
        # the summary keeps every per-destination figure...
        for key in ("state", "lag_seconds", "events_applied", "queue_depth", "time_until_data_loss_seconds"):
            assert key in dest, key
        assert dest["events_applied"] == full_dest["events_applied"] == 20
        assert set(dest["groups"]) == set(full_dest["groups"])
        for name, group in dest["groups"].items():
            full_group = full_dest["groups"][name]
            # ...and every per-group one (state, lag, counters), but no stream positions
            assert "positions" not in group and "checkpoint" not in group
            assert group["streams"] == len(full_group["positions"]) > 0
            assert {k: v for k, v in full_group.items() if k not in ("positions", "checkpoint")}.keys() == (
                group.keys()
            )
            assert group["state"] == full_group["state"]
        assert sum(len(g["positions"]) for g in full_dest["groups"].values()) >= 16
        stream_id = re.compile(r'"[0-9a-f]{32}"')  # the keys of positions/checkpoint
        assert stream_id.search(long_text) and not stream_id.search(short_text)
        assert len(short_text) < len(long_text)
        _, explicit = await get_json("/status?verbose=false", run.url)
        groups = explicit["tables"]["ks.t"]["destinations"]["mem"]["groups"]
        assert groups.keys() == dest["groups"].keys()
        assert not any("positions" in g for g in groups.values())
        status, error = await get_json("/status?verbose=maybe", run.url)
        assert status == 400 and error == {"error": "verbose must be true or false, got 'maybe'"}
        assert await run.stop() == 0


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (True, "ok"),
        (None, "ok"),
        ([{"release_version": "3.0.8"}], "release 3.0.8"),
        ([{"host_id": "a", "data_center": "dc1"}], "host id a, data center dc1"),
        ([], "ok (no rows)"),
        ("PING ok", "PING ok"),
    ],
)
def test_plain(answer: Any, text: str) -> None:
    assert plain(answer) == text


async def test_timed_error_texts() -> None:
    async def refused() -> None:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")

    async def ours() -> None:
        raise SinkUnavailable("pg: PostgreSQL at 127.0.0.1:1/db: connection refused")

    async def leaky() -> None:
        raise OSError("cannot reach postgresql://u:hunter2@db/x")

    assert (await timed(refused(), 5)).detail == (
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    )
    assert (await timed(ours(), 5)).detail == "pg: PostgreSQL at 127.0.0.1:1/db: connection refused"
    assert "hunter2" not in (await timed(leaky(), 5)).detail


async def test_progress_lines_while_running(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811
    redis_url: str,
    redis_prefix: str,
) -> None:
    """``[logging] progress_interval``: the daemon logs "replication progress" per table and
    destination, with the rate of what it applied."""
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    try:
        cfg = make_config(
            emulator, redis_url, redis_prefix, free_port(), '[logging]\nprogress_interval = "300ms"\n'
        )
        sink = MemorySink("mem")
        async with Running(cfg, sink) as run:
            for i in range(30):
                await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'v{i}')")

            def progress() -> list[dict[str, Any]]:
                records = [json.loads(line) for line in stream.getvalue().splitlines()]
                return [r for r in records if r["message"] == "replication progress"]

            async def moving_then_idle() -> bool:
                seen = progress()
                return any(r["events_per_second"] > 0 for r in seen) and seen[-1]["events_applied"] == 30

            await until(moving_then_idle)
            assert await run.stop() == 0
        records = progress()
        assert {(r["table"], r["destination"]) for r in records} == {("ks.t", "mem")}
        assert sum(r["events_per_second"] for r in records) > 0
        last = records[-1]
        assert last["state"] in ("running", "retrying") and last["lag_seconds"] is not None
        assert last["level"] == "info" and last["groups"] >= 1
    finally:
        configure(level="warning", fmt="json")
