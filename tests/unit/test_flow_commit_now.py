"""Committer saves from several tasks (the writer and an operator's checkpoint flush) never overlap,
so a checkpoint cannot move backwards when an older save lands after a newer one."""

from __future__ import annotations

import asyncio
import uuid

from cdcd.events import Position
from cdcd.flow import (
    CommitPolicy,
    Committer,
    ManualClock,
    NoFlowEvents,
    PipelineId,
    RetryPolicy,
    WatermarkTracker,
)
from cdcd.scylla.generations import StreamGroup

GEN = 1_700_000_000_000
S1 = b"\x01" * 16
GROUP = StreamGroup(table="ks.t", generation=GEN, end=None, streams=(S1,), key="g")


def pos(n: int) -> Position:
    return Position(generation=GEN, stream_id=S1, time=uuid.UUID(int=((n + 1) << 96) | (0x1000 << 64)))


class SlowSaver:
    """Saves land in Redis in the order the *store* finishes them: the first save is held until
    released, so an unserialized second save would overtake it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[dict[bytes, Position]] = []
        self.landed: list[dict[bytes, Position]] = []

    async def save(self, dest: str, group: object, positions: dict[bytes, Position]) -> None:
        self.started.append(dict(positions))
        if len(self.started) == 1:
            await self.release.wait()
        self.landed.append(dict(positions))


async def test_a_second_commit_waits_for_the_first_and_saves_only_what_moved_after_it() -> None:
    tracker, saver = WatermarkTracker(), SlowSaver()
    committer = Committer(
        store=saver, destination="pg", group=GROUP, tracker=tracker,
        policy=CommitPolicy(every_s=3600, every_events=10**6), retry=RetryPolicy(jitter=False),
        clock=ManualClock(), events=NoFlowEvents(), pid=PipelineId(destination="pg", table="ks.t", group="g"),
    )  # fmt: skip
    (await tracker.track({S1: pos(1)})).resolve()
    first = asyncio.ensure_future(committer.commit())
    await asyncio.sleep(0)
    assert saver.started == [{S1: pos(1)}]
    (await tracker.track({S1: pos(2)})).resolve()
    second = asyncio.ensure_future(committer.commit())
    third = asyncio.ensure_future(committer.commit())
    await asyncio.sleep(0.01)
    assert len(saver.started) == 1  # the others wait for the save under way
    saver.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second, third), 5) == [True, True, False]
    assert saver.landed == [{S1: pos(1)}, {S1: pos(2)}]
    assert committer.saved == {S1: pos(2)}
    assert committer.pending() == {}
