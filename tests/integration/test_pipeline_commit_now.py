"""``Pipeline.commit_now()`` (the operator's checkpoint flush) saves the applied positions to the real
Redis at once, outside the commit policy, and saves nothing once the pipeline is terminated."""

from __future__ import annotations

import asyncio

import msgspec

from cdcd.flow import BatchPolicy, CommitPolicy
from cdcd.state import CheckpointStore, DeadLetterStore
from tests.integration.test_pipeline import FAST, GROUP, S1, S2, ListSource, MemorySink, batch, ev, make, pos

# One read batch per write; the policy never saves by itself during the test (only commit_now()).
NEVER = msgspec.structs.replace(
    FAST, batch=BatchPolicy(max_rows=1, max_wait=0), commit=CommitPolicy(every_s=3600, every_events=10**6)
)


async def test_commit_now_saves_applied_positions_at_once(
    stores: tuple[CheckpointStore, DeadLetterStore],
) -> None:
    checkpoints, deadletters = stores
    sink = MemorySink(block=lambda e: e.key["id"] == 3)
    source = ListSource([batch(1, ev(1)), batch(2, ev(2, S2)), batch(3, ev(3))], hold_open=True)
    pipeline = make(source, sink, checkpoints, deadletters, config=NEVER)
    assert await pipeline.commit_now() is False  # not started: nothing to save
    run = asyncio.ensure_future(pipeline.run())
    await asyncio.wait_for(sink.blocked.wait(), 10)  # batches 1 and 2 applied, 3 is being written
    assert sink.ids() == [1, 2]
    assert await checkpoints.load("pg", GROUP) == {}  # the policy has not saved anything

    assert await pipeline.commit_now() is True
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 2), S2: pos(S2, 2)}  # not past batch 3
    assert pipeline.status().checkpoint == {S1.hex(): str(pos(S1, 2).time), S2.hex(): str(pos(S2, 2).time)}
    assert await pipeline.commit_now() is False  # nothing moved since

    sink.gate.set()
    for _ in range(500):
        if pipeline.status().positions.get(S1.hex()) == str(pos(S1, 3).time):
            break
        await asyncio.sleep(0.01)
    assert await pipeline.commit_now() is True
    assert await checkpoints.load("pg", GROUP) == {S1: pos(S1, 3), S2: pos(S2, 3)}

    pipeline.terminate()
    await asyncio.wait_for(run, 10)
    assert await pipeline.commit_now() is False  # terminated: commits nothing more
