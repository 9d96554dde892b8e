"""CDC generation switches mid-stream (emulator ``new_generation``, also with a topology change)
with writes before, across and after them, and late writes (``USING TIMESTAMP`` inside the
confidence window, including one into the generation that just closed): nothing is lost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.e2e.compare import pg_connect, source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec
from tests.e2e.workload import Workload


def newest_generation_ms(cql: Any) -> int:
    rows = list(
        cql.execute("SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'")
    )
    return max(int(r.time.timestamp() * 1000) for r in rows)


def generation_count(cql: Any) -> int:
    return len(list(cql.execute("SELECT time FROM system_distributed.cdc_generation_timestamps")))


async def write_for(workload: Workload, seconds: float) -> int:
    """Keep writing small chunks for ``seconds`` (across a generation switch); returns changes."""
    n = (await asyncio.to_thread(workload.run, 100, chunk=100)).changes
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n += (await asyncio.to_thread(workload.run, 100, chunk=100)).changes
    return n


async def test_generation_switches_and_late_writes_lose_nothing(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    workload = Workload(cql, "gen.t", seed=5, partitions=30, rows_per_partition=30)
    workload.create()
    cql.execute(
        "CREATE TABLE gen.late (id int PRIMARY KEY, v text, wrote_at bigint) WITH cdc = {'enabled': true}"
    )
    cdcd = make_cdcd(
        [TableSpec("gen.t", "dst.t"), TableSpec("gen.late", "dst.late")],
        ConfigOptions(confidence_window="3s", generation_poll="200ms"),
    )
    cdcd.start()
    cdcd.wait_ready()
    before = generation_count(cql)

    await asyncio.to_thread(workload.run, 1500)
    # 1) A new generation 1.5 s from now (same vnodes, new streams); keep writing across it.
    cql.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '1500')")
    switch_ms = newest_generation_ms(cql)
    assert await write_for(workload, switch_ms / 1000 + 0.5 - time.time()) > 0  # until 0.5 s past it
    # Late write into the generation that just closed: its timestamp is before the switch but
    # within the confidence window of now (the old generation's streams must still be read).
    now_us = time.time_ns() // 1000
    late_old = (switch_ms - 300) * 1000
    assert now_us - late_old < 2_700_000, "the late write would be outside the confidence window"
    cql.execute(
        f"INSERT INTO gen.late (id, v, wrote_at) VALUES (1, 'old generation', {late_old}) USING TIMESTAMP {late_old}"
    )

    # 2) A topology change: a generation with 3 fresh vnode tokens, writes across it again.
    cql.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation:3', '1000')")
    assert await write_for(workload, 2.5) > 0
    await asyncio.to_thread(workload.run, 1500)

    # Late writes in the current generation: 1 s in the past (a new row, and an update that is
    # newer than the stored value), and one older than the stored value (loses in Scylla too).
    now_us = time.time_ns() // 1000
    cql.execute(f"INSERT INTO gen.late (id, v) VALUES (2, 'late') USING TIMESTAMP {now_us - 1_000_000}")
    cql.execute(f"INSERT INTO gen.late (id, v) VALUES (3, 'current') USING TIMESTAMP {now_us - 1_500_000}")
    cql.execute(f"UPDATE gen.late USING TIMESTAMP {now_us - 1_200_000} SET v = 'late update' WHERE id = 3")
    cql.execute(f"UPDATE gen.late USING TIMESTAMP {now_us - 1_600_000} SET v = 'too old' WHERE id = 3")
    assert generation_count(cql) == before + 2

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    await wait_converged(cql, source_schema(cql, "gen.t"), pg_dsn, "dst.t", timeout=90, alive=alive)
    late = await wait_converged(
        cql, source_schema(cql, "gen.late"), pg_dsn, "dst.late", timeout=30, alive=alive
    )
    assert {k: r["v"] for k, r in late.rows.items()} == {
        (1,): "old generation",
        (2,): "late",
        (3,): "late update",
    }
    conn = await pg_connect(pg_dsn)
    try:  # the old-generation late write really carries its old timestamp
        assert await conn.fetchval("SELECT _cdc_write_time FROM dst.late WHERE id = 1") == late_old
    finally:
        await conn.close()

    # cdcd really moved through both new generations for both tables.
    def switched() -> bool:
        events = [m for m in cdcd.log_messages() if m.get("message") == "generation switch"]
        return len({(m["table"], m["new_generation"]) for m in events}) >= 4

    for _ in range(100):
        if switched():
            break
        await asyncio.sleep(0.1)
    assert switched(), cdcd.log_tail()
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()
