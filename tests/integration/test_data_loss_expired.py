"""R-43 past the horizon, through the whole daemon: a destination stuck longer than its table's
CDC log TTL gets an error log (changes may have expired unapplied) right after the "approaches"
warning, not five minutes later; /metrics and /status show a negative time until data loss
(TTL - lag); once it catches up, one "recovered" line. Runtime: ~6 s (the lag must pass a 4 s TTL)."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import pytest

from cdcd.scylla import ScyllaSession
from tests.integration.test_data_loss_horizon import GatedSink, lines, records, short_ttl_config  # noqa: F401
from tests.integration.test_http_daemon import (
    MemorySink,
    Running,
    get_json,
    scylla,  # noqa: F401 (the fixture creating ks.t)
    until,
)

WARNING = "destination lag approaches the CDC log TTL"
ERROR = "destination lag exceeds the CDC log TTL"
RECOVERED = "destination lag back below the data-loss threshold"


async def test_a_destination_stuck_past_the_ttl_logs_an_error(
    emulator: Any,
    scylla: ScyllaSession,  # noqa: F811 (the fixture imported above)
    redis_url: str,
    redis_prefix: str,
    lines: io.StringIO,  # noqa: F811 (the fixture imported above)
) -> None:
    # ks.e keeps its CDC log for 4 s: warning from 2 s of lag (half the TTL), error from 4 s.
    cfg = await short_ttl_config(scylla, emulator, redis_url, redis_prefix, "ks.e", ttl=4)
    slow = GatedSink("slow")
    runner = Running(cfg, MemorySink("mem"), {"slow": slow})
    runner.daemon.horizon_every = 0.2
    async with runner as run:

        async def replicating() -> bool:
            return len(run.daemon._active) == 2

        await until(replicating)
        await scylla.execute("INSERT INTO ks.e (pk, v) VALUES (1, 'stuck')")

        async def expired() -> bool:
            return bool(records(lines, ERROR))

        await until(expired, limit=30)
        (warning,) = records(lines, WARNING)  # came first, well within the 5 min repeat period
        (error,) = records(lines, ERROR)
        assert warning["level"] == "warning" and error["level"] == "error"
        assert (error["table"], error["destination"], error["cdc_ttl"]) == ("ks.e", "slow", 4)
        assert error["lag_seconds"] >= 4.0 and error["time_until_data_loss_seconds"] <= 0.0
        assert error["time_until_data_loss_seconds"] == pytest.approx(4 - error["lag_seconds"], abs=0.11)

        async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as r:
            text = await r.text()
        series = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("cdcd_time_until_data_loss_seconds{", "cdcd_replication_lag_seconds{"))
            and 'table="ks.e"' in line
        }
        assert series["cdcd_time_until_data_loss_seconds"] < 0
        assert series["cdcd_time_until_data_loss_seconds"] == pytest.approx(
            4 - series["cdcd_replication_lag_seconds"], abs=1e-6
        )
        _, body = await get_json("/status", run.url)
        dest = body["tables"]["ks.e"]["destinations"]["slow"]
        assert dest["time_until_data_loss_seconds"] < 0
        assert dest["time_until_data_loss_seconds"] == pytest.approx(4 - dest["lag_seconds"], abs=1e-6)

        slow.gate.set()  # the change was read before it expired: it is still applied

        async def recovered() -> bool:
            return bool(records(lines, RECOVERED))

        await until(recovered, limit=30)
        assert slow.rows == {1: "stuck"}
        assert len(records(lines, ERROR)) == 1, "error repeated within 5 min"
