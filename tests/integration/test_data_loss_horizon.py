"""R-43 through the whole daemon: a destination that stops applying falls behind a table whose
CDC log TTL is short; /metrics and /status show the time until data loss (TTL - lag), a warning
is logged when it drops below the threshold, and an info line once the destination caught up."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import msgspec
import pytest

from cdcd.config import Config, Duration
from cdcd.events import ChangeEvent
from cdcd.ops.logging import configure
from cdcd.scylla import ScyllaSession
from tests.integration.test_http_daemon import (
    DownSink,
    MemorySink,
    Outcome,
    Running,
    free_port,
    get_json,
    make_config,
    scylla,  # noqa: F401 (the fixture creating ks.t)
    until,
)


class GatedSink(MemorySink):
    """A destination that stops applying while ``gate`` is clear (a slow or stuck warehouse)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> Outcome:
        await self.gate.wait()
        return await super().write(mapping, events)


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    yield stream
    configure(level="warning", fmt="json")


def records(stream: io.StringIO, message_start: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return [r for r in out if str(r.get("message", "")).startswith(message_start)]


async def short_ttl_config(
    session: ScyllaSession, emulator: Any, redis_url: str, redis_prefix: str, table: str, *, ttl: int
) -> Config:
    """Creates ``table`` with a ``ttl``-second CDC log and returns the daemon config replicating
    ks.t into "mem" and ``table`` into "slow", with a data-loss threshold (1 h) that the cap of
    half the TTL decides."""
    await session.execute(
        f"CREATE TABLE {table} (pk int PRIMARY KEY, v text) WITH cdc = {{'enabled': true, 'ttl': {ttl}}}"
    )
    extra = '[destinations.slow]\ntype = "postgres"\ndsn = "postgresql://unused@127.0.0.1/y"\n'
    extra += f'[[tables]]\nsource = "{table}"\ndestinations = ["slow"]\n'
    cfg = make_config(emulator, redis_url, redis_prefix, free_port(), extra)
    return msgspec.structs.replace(
        cfg, pipeline=msgspec.structs.replace(cfg.pipeline, data_loss_warning=Duration(3600))
    )


async def test_a_stuck_destination_warns_before_the_cdc_log_expires(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811 (the fixture imported above)
    redis_url: str,
    redis_prefix: str,
    lines: io.StringIO,
) -> None:
    # ks.h keeps its CDC log for 6 s: with the threshold capped at half the TTL, 3 s of lag warns.
    cfg = await short_ttl_config(scylla, emulator, redis_url, redis_prefix, "ks.h", ttl=6)
    slow = GatedSink("slow")
    runner = Running(cfg, MemorySink("mem"), {"slow": slow})
    runner.daemon.horizon_every = 0.2
    async with runner as run:

        async def replicating() -> bool:  # both tables' start positions fixed: writes now are read
            return len(run.daemon._active) == 2

        await until(replicating)
        await scylla.execute("INSERT INTO ks.h (pk, v) VALUES (1, 'late')")
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 'fine')")

        async def warned() -> bool:
            return bool(records(lines, "destination lag approaches the CDC log TTL"))

        await until(warned, limit=30)
        (warning,) = records(lines, "destination lag approaches the CDC log TTL")
        assert (
            warning["level"] == "warning" and warning["table"] == "ks.h" and warning["destination"] == "slow"
        )
        assert warning["cdc_ttl"] == 6 and warning["threshold_seconds"] == 3.0
        assert warning["time_until_data_loss_seconds"] == pytest.approx(6 - warning["lag_seconds"], abs=0.11)
        assert warning["time_until_data_loss_seconds"] <= 3.0  # (logged rounded to 0.1 s)

        async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as r:
            text = await r.text()
        series = {
            line.split("{")[0] + "|" + line.split('destination="')[1].split('"')[0]: float(
                line.rsplit(" ", 1)[1]
            )
            for line in text.splitlines()
            if line.startswith(("cdcd_time_until_data_loss_seconds{", "cdcd_replication_lag_seconds{"))
            and 'table="ks.h"' in line
        }
        assert series["cdcd_time_until_data_loss_seconds|slow"] == pytest.approx(
            6 - series["cdcd_replication_lag_seconds|slow"], abs=1e-6
        )
        _, body = await get_json("/status", run.url)
        dest = body["tables"]["ks.h"]["destinations"]["slow"]
        assert dest["time_until_data_loss_seconds"] == pytest.approx(6 - dest["lag_seconds"], abs=1e-6)
        ok = body["tables"]["ks.t"]["destinations"]["mem"]  # default TTL (24 h): far from any loss
        assert ok["time_until_data_loss_seconds"] > 86_000

        slow.gate.set()  # the destination recovers and catches up

        async def recovered() -> bool:
            return bool(records(lines, "destination lag back below the data-loss threshold"))

        await until(recovered, limit=30)
        assert slow.rows == {1: "late"}
        assert not records(lines, "destination lag approaches the CDC log TTL")[1:], (
            "warning repeated within 5 min"
        )


async def test_a_destination_down_since_start_up_is_judged_by_its_checkpoints(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811 (the fixture imported above)
    redis_url: str,
    redis_prefix: str,
    lines: io.StringIO,
) -> None:
    """No pipeline runs for a destination that never connected, so there is no live lag: cdcd
    estimates it from the checkpoints and start position in Redis, and still warns (R-43)."""
    cfg = await short_ttl_config(scylla, emulator, redis_url, redis_prefix, "ks.h", ttl=6)
    first = MemorySink("slow")
    async with Running(cfg, MemorySink("mem"), {"slow": first}) as run:  # replicates, checkpoints
        await scylla.execute("INSERT INTO ks.h (pk, v) VALUES (1, 'one')")

        async def applied() -> bool:
            return first.rows == {1: "one"}

        await until(applied)
        assert await run.stop() == 0

    runner = Running(cfg, MemorySink("mem"), {"slow": DownSink("slow")})
    runner.daemon.horizon_every = 0.2
    async with runner as run:

        async def warned() -> bool:
            return bool(records(lines, "destination lag approaches the CDC log TTL"))

        await until(warned, limit=30)
        (warning,) = records(lines, "destination lag approaches the CDC log TTL")
        assert warning["table"] == "ks.h" and warning["destination"] == "slow"
        assert warning["lag_seconds"] >= 3.0 and warning["cdc_ttl"] == 6  # (rounded to 0.1 s)
        _, body = await get_json("/status", run.url)
        dest = body["tables"]["ks.h"]["destinations"]["slow"]
        assert dest["state"] == "waiting" and dest["lag_source"] == "checkpoints"
        assert dest["time_until_data_loss_seconds"] == pytest.approx(6 - dest["lag_seconds"], abs=1e-6)
        async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as r:
            text = await r.text()
        assert (
            'cdcd_time_until_data_loss_seconds{destination="slow",replica="test-replica",table="ks.h"}'
            in text
        )
