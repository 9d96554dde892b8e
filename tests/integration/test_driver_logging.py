"""The Scylla driver's connection failures are one log line each: the driver's message and an
``error`` field, never a traceback (it logs every failed reconnect with ``exc_info``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from cdcd.ops.logging import configure
from cdcd.scylla import ScyllaSession
from tests.scylla_emulator.server import EmulatorServer


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    yield stream
    configure(level="warning", fmt="json")


def driver_records(stream: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [r for r in records if str(r.get("component", "")).startswith("cassandra")]


async def test_reconnects_to_a_stopped_emulator_log_one_line_each(captured: io.StringIO) -> None:
    server = EmulatorServer("127.0.0.1", 0, vnodes=8, shards=2)
    server.start()
    stopped = False
    session = await ScyllaSession.connect(
        [f"{server.host}:{server.port}"], request_timeout=5.0, connect_timeout=2.0
    )
    try:
        server.stop()
        stopped = True
        with contextlib.suppress(Exception):  # a query notices the closed connection at once
            await session.execute("SELECT release_version FROM system.local")

        async def refused() -> bool:
            return any("Connection refused" in r.get("error", "") for r in driver_records(captured))

        async with asyncio.timeout(60):
            while not await refused():  # noqa: ASYNC110 (the driver reconnects on its own thread)
                await asyncio.sleep(0.1)
    finally:
        await session.aclose()
        if not stopped:
            server.stop()
    text = captured.getvalue()
    assert "Traceback" not in text
    records = driver_records(captured)
    failures = [r for r in records if "error" in r]
    assert failures, records
    for r in records:
        assert "exception" not in r and "stack" not in r, r
    for r in failures:
        assert not r["message"].endswith(":"), r  # the driver's "Error connecting to h:p:" is tidied
    assert any(
        "Connection refused" in r["error"] and f"('127.0.0.1', {server.port})" in r["error"] for r in failures
    ), failures


def test_console_format_folds_a_driver_traceback_into_one_line() -> None:
    stream = io.StringIO()
    configure(level="info", fmt="console", stream=stream)
    try:
        try:
            raise ConnectionRefusedError(
                111, "Tried connecting to [('127.0.0.1', 9)]. Last error: Connection refused"
            )
        except ConnectionRefusedError:
            logging.getLogger("cassandra.pool").warning(
                "Error attempting to reconnect to %s:", "127.0.0.1:9", exc_info=True
            )
            logging.getLogger("cassandra.cluster").error("stack too", stack_info=True)
            logging.getLogger("cdcd.test").warning("ours keeps its traceback", exc_info=True)
    finally:
        configure(level="warning", fmt="json")
    lines = stream.getvalue().splitlines()
    driver = [line for line in lines if "cassandra" in line]
    assert len(driver) == 2, lines
    assert "Error attempting to reconnect to 127.0.0.1:9" in driver[0]
    assert "error=\"ConnectionRefusedError: [Errno 111] Tried connecting to [('127.0.0.1', 9)]" in driver[0]
    assert "stack too" in driver[1]
    # cdcd's own records are not touched: their traceback is still there
    assert sum("Traceback" in line for line in lines) == 1
    assert lines.index(next(line for line in lines if "Traceback" in line)) > lines.index(driver[1])
