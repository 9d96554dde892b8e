"""``kill -9`` of ``cdcd run`` at random moments during a 50k-change workload, restarted each
time: afterwards the destination equals the source and the delete history (``delete =
"tombstone"``) holds every delete of the CDC log exactly once (R-04, R-41). In a vnode keyspace
(50k changes), and in a tablet keyspace (20k changes) whose table is split and merged (new stream
sets) while cdcd is being killed."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from tests.e2e.compare import (
    assert_history_once,
    source_schema,
    wait_converged,
)
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec
from tests.e2e.workload import Workload

CHANGES = 50_000
TABLET_CHANGES = 20_000
RESIZES = ["16", "2", "8"]  # tablet counts the tablet variant's table moves through, one per kill
MIN_KILLS = 5


@pytest.mark.slow  # ~2 min (vnodes), ~1 min (tablets); part of the default run
@pytest.mark.parametrize(
    ("tablets", "changes"), [(False, CHANGES), (True, TABLET_CHANGES)], ids=["vnodes", "tablets"]
)
async def test_kill9_at_random_moments_loses_and_duplicates_nothing(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, tablets: bool, changes: int
) -> None:
    workload = Workload(cql, "crash.t", seed=99, partitions=60, rows_per_partition=40)
    workload.create(tablets=tablets)
    # Small batches and frequent checkpoints: kills land between, during and after commits.
    cdcd = make_cdcd(
        [TableSpec("crash.t", "dst.t", delete="tombstone")],
        ConfigOptions(batch_max_rows=300, checkpoint_every=500, checkpoint_interval="300ms"),
    )
    cdcd.start()
    cdcd.wait_ready()

    writer = asyncio.create_task(asyncio.to_thread(workload.run, changes, chunk=500))
    resizes = list(RESIZES) if tablets else []
    rng = random.Random(4242)
    kills: list[float] = []
    resumes: list[float] = []
    while not writer.done() or len(kills) < MIN_KILLS:
        await asyncio.wait({writer}, timeout=rng.uniform(2.5, 7.0))
        if resizes:  # split or merge: a new stream set, starting a moment before or after the kill
            cql.execute(
                "INSERT INTO emulator.control (command, value) VALUES (%s, %s)",
                (f"new_stream_set:crash.t:{resizes.pop(0)}", str(rng.randint(0, 800))),
            )
        cdcd.kill9()
        kills.append(time.monotonic())
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        cdcd.start()
        started = time.monotonic()
        await asyncio.to_thread(cdcd.wait_ready, 60)
        resumes.append(time.monotonic() - started)
    result = await writer
    assert result.changes + result.tolerated_errors == changes
    assert len(kills) >= MIN_KILLS
    if tablets:
        sets = list(
            cql.execute(
                "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = 'crash' AND table_name = 't'"
            )
        )
        assert len(sets) == 1 + len(RESIZES) and not resizes

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    schema = source_schema(cql, "crash.t")
    snap = await wait_converged(cql, schema, pg_dsn, "dst.t", timeout=150, alive=alive)
    assert len(snap.rows) > 100

    # Every delete of the CDC log is in the history exactly once, and nothing else is.
    deletes = await assert_history_once(cql, "crash.t", pg_dsn, "dst.t")
    assert deletes > changes // 50  # the workload deleted a lot (row, range and partition deletes)

    assert cdcd.stop() == 0, cdcd.log_tail()
    messages = cdcd.log_messages()
    assert not [m for m in messages if "dead-letter" in m.get("message", "")], "events dead-lettered"
    print(f"kills={len(kills)} resume-to-ready seconds={[round(r, 2) for r in resumes]}")
