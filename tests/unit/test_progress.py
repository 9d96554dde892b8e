"""The periodic "replication progress" line (cdcd.ops.progress): per table and destination,
events/s since the previous line, lag and state, every ``[logging] progress_interval``."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdcd.config import loads
from cdcd.ops.logging import configure
from cdcd.ops.progress import ProgressLog


@dataclass
class St:
    """The PipelineStatus fields the progress line reads."""

    group: str
    events_applied: int
    lag_seconds: float | None = 1.0
    state: str = "running"
    table: str = "shop.orders"
    destination: str = "pg"
    mode: str = "shared"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    yield stream
    configure(level="warning", fmt="json")


def progress_records(stream: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [r for r in records if r["message"] == "replication progress"]


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_one_line_per_table_and_destination(lines: io.StringIO) -> None:
    t = FakeTime()
    statuses = [
        St("1:0", 100, lag_seconds=0.5),
        St("1:1", 50, lag_seconds=2.25),
        St("1:0", 7, destination="ch", lag_seconds=9.0),
    ]
    stop = {"after": 2}

    def stopping() -> bool:
        return len(t.slept) >= stop["after"]

    def current() -> list[St]:
        return statuses

    progress = ProgressLog(current, 10.0, sleep=t.sleep, stopping=stopping, clock=t.clock)
    # first round: everything applied so far, over the first 10 s
    statuses[0].events_applied, statuses[1].events_applied = 100, 50
    await asyncio.wait_for(progress.run(), 5)
    assert t.slept == [10.0, 10.0]
    records = progress_records(lines)
    assert len(records) == 2  # the second sleep ended because cdcd stops: no line then
    by_dest = {r["destination"]: r for r in records}
    assert by_dest["pg"] == {
        **by_dest["pg"],
        "level": "info",
        "component": "cdcd.ops.progress",
        "table": "shop.orders",
        "state": "running",
        "lag_seconds": 2.2,  # the largest lag of its groups, rounded
        "events_per_second": 15.0,  # 150 events in 10 s
        "events_applied": 150,
        "groups": 2,
        "catching_up": 0,
    }
    assert by_dest["ch"]["events_per_second"] == 0.7 and by_dest["ch"]["lag_seconds"] == 9.0


def test_rates_since_the_previous_line_and_restarted_pipelines() -> None:
    t = FakeTime()
    statuses = [St("1:0", 100), St("1:1", 40, state="retrying", mode="catching-up")]
    progress = ProgressLog(lambda: statuses, 5.0, sleep=t.sleep, clock=t.clock)
    t.now += 10
    (first,) = progress.tick()
    assert first["events_per_second"] == 14.0 and first["state"] == "retrying"
    assert first["catching_up"] == 1
    t.now += 4
    statuses[0].events_applied = 120  # +20
    statuses[1] = St("1:1", 6)  # restarted from its checkpoint: counts from 0 again (+6)
    (second,) = progress.tick()
    assert second["events_per_second"] == 6.5  # 26 events in 4 s
    assert second["state"] == "running" and second["catching_up"] == 0
    t.now += 2
    (third,) = progress.tick()
    assert third["events_per_second"] == 0.0 and third["events_applied"] == 126  # idle: still a line


def test_finished_groups_do_not_count_towards_lag_and_none_is_unknown() -> None:
    t = FakeTime()
    statuses = [St("1:0", 5, lag_seconds=None), St("0:0", 9, lag_seconds=500.0, state="done")]
    (row,) = ProgressLog(lambda: statuses, 1.0, sleep=t.sleep, clock=t.clock).tick()
    assert row["lag_seconds"] is None and row["state"] == "running"


async def test_zero_interval_logs_nothing_and_waits_for_the_stop(lines: io.StringIO) -> None:
    t = FakeTime()
    progress = ProgressLog(lambda: [St("1:0", 1)], 0.0, sleep=t.sleep, stopping=lambda: len(t.slept) >= 3)
    await asyncio.wait_for(progress.run(), 5)
    assert progress_records(lines) == []
    assert t.slept and all(s >= 60 for s in t.slept)  # no busy loop


async def test_a_failing_status_source_does_not_stop_the_loop(lines: io.StringIO) -> None:
    t = FakeTime()

    def broken() -> list[St]:
        raise RuntimeError("boom")

    progress = ProgressLog(broken, 1.0, sleep=t.sleep, stopping=lambda: len(t.slept) >= 3, clock=t.clock)
    await asyncio.wait_for(progress.run(), 5)
    assert len(t.slept) == 3


def test_config_key() -> None:
    base = (
        '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://h/db"\n'
        '[[tables]]\nsource = "a.b"\ndestinations = ["pg"]\n'
    )
    assert loads(base).logging.progress_interval == 60.0
    assert loads(base + '[logging]\nprogress_interval = "0"\n').logging.progress_interval == 0.0
    assert loads(base + '[logging]\nprogress_interval = "15s"\n').logging.progress_interval == 15.0
