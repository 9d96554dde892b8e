"""Committer: saves the contiguous watermark every N seconds or N events; survives Redis outages."""

from __future__ import annotations

import uuid

import pytest

from cdcd.errors import LeaseLost
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
from cdcd.state import StateUnavailable

GEN = 1_700_000_000_000
S1, S2 = b"\x01" * 16, b"\x02" * 16
GROUP = StreamGroup(table="ks.t", generation=GEN, end=None, streams=(S1, S2), key="g")


def pos(stream: bytes, n: int) -> Position:
    return Position(generation=GEN, stream_id=stream, time=uuid.UUID(int=((n + 1) << 96) | (0x1000 << 64)))


class Saver:
    """In-memory checkpoint store that can be made to fail."""

    def __init__(self) -> None:
        self.saves: list[dict[bytes, Position]] = []
        self.fail: BaseException | None = None

    async def save(self, dest: str, group: object, positions: dict[bytes, Position]) -> None:
        if self.fail is not None:
            raise self.fail
        self.saves.append(dict(positions))


class Failures(NoFlowEvents):
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def commit_failed(self, pid: PipelineId, error: BaseException) -> None:
        self.errors.append(error)


def make(
    every_s: float = 10, every_events: int = 3
) -> tuple[Committer, WatermarkTracker, Saver, ManualClock, Failures]:
    clock, tracker, saver, events = (
        ManualClock(),
        WatermarkTracker(start={S2: pos(S2, 0)}),
        Saver(),
        Failures(),
    )
    committer = Committer(
        store=saver, destination="pg", group=GROUP, tracker=tracker,
        policy=CommitPolicy(every_s=every_s, every_events=every_events),
        retry=RetryPolicy(jitter=False), clock=clock, events=events,
        pid=PipelineId(destination="pg", table="ks.t", group="g"),
    )  # fmt: skip
    return committer, tracker, saver, clock, events


async def test_nothing_pending_means_no_deadline_and_no_save() -> None:
    committer, *_, saver, _clock, _ = make()
    assert committer.until_due() is None
    assert await committer.maybe_commit() is False
    assert await committer.commit() is False
    assert saver.saves == []


async def test_saves_after_every_s_seconds_only_streams_that_moved() -> None:
    committer, tracker, saver, clock, _ = make(every_s=10, every_events=1000)
    clock.advance(4)
    (await tracker.track({S1: pos(S1, 1)})).resolve()
    committer.note_resolved(1)
    assert committer.until_due() == 6
    assert await committer.maybe_commit() is False
    clock.advance(6)
    assert await committer.maybe_commit() is True
    assert saver.saves == [{S1: pos(S1, 1)}]  # S2 did not move from its loaded checkpoint
    assert committer.until_due() is None


async def test_saves_after_every_events() -> None:
    committer, tracker, saver, _clock, _ = make(every_s=10, every_events=3)
    for n in (1, 2, 3):
        (await tracker.track({S1: pos(S1, n), S2: pos(S2, n)})).resolve()
        committer.note_resolved(1)
        saved = await committer.maybe_commit()
        assert saved is (n == 3)
    assert saver.saves == [{S1: pos(S1, 3), S2: pos(S2, 3)}]


async def test_unresolved_work_is_not_saved() -> None:
    committer, tracker, saver, _clock, _ = make(every_events=1)
    first = await tracker.track({S1: pos(S1, 1)})
    (await tracker.track({S1: pos(S1, 2)})).resolve()
    committer.note_resolved(1)
    assert committer.until_due() is None  # S1's watermark cannot move past the unresolved first batch
    first.resolve()
    assert await committer.maybe_commit() is True
    assert saver.saves == [{S1: pos(S1, 2)}]


async def test_redis_outage_is_reported_and_retried_with_backoff() -> None:
    committer, tracker, saver, clock, events = make(every_events=1)
    (await tracker.track({S1: pos(S1, 1)})).resolve()
    committer.note_resolved(1)
    saver.fail = StateUnavailable("redis down")
    assert await committer.maybe_commit() is False
    assert committer.until_due() == 1.0  # RetryPolicy bound for the first retry
    clock.advance(1)
    assert await committer.maybe_commit() is False
    assert committer.until_due() == 2.0
    assert len(events.errors) == 2
    saver.fail = None
    clock.advance(2)
    assert await committer.maybe_commit() is True
    assert saver.saves == [{S1: pos(S1, 1)}]


async def test_lease_loss_propagates() -> None:
    committer, tracker, saver, _clock, _ = make(every_events=1)
    (await tracker.track({S1: pos(S1, 1)})).resolve()
    committer.note_resolved(1)
    saver.fail = LeaseLost("taken over")
    with pytest.raises(LeaseLost):
        await committer.maybe_commit()
