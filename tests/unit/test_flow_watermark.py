"""WatermarkTracker: contiguous per-stream watermark, out-of-order resolution, capped in-flight."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cdcd.events import Position
from cdcd.flow import WatermarkTracker

GEN = 1_700_000_000_000
S1, S2 = b"\x01" * 16, b"\x02" * 16


def tu(ts: int, low: int = 0) -> uuid.UUID:
    """A version-1 UUID with 60-bit timestamp ``ts`` and low 8 bytes ``low``."""
    time_low, time_mid, time_hi = ts & 0xFFFFFFFF, (ts >> 32) & 0xFFFF, (ts >> 48) & 0x0FFF
    hi = (time_low << 96) | (time_mid << 80) | ((0x1000 | time_hi) << 64)
    return uuid.UUID(int=hi | low)


def pos(stream: bytes, ts: int, low: int = 0) -> Position:
    return Position(generation=GEN, stream_id=stream, time=tu(ts, low))


async def test_checkpoint_capture_resolve_out_of_order_then_resume() -> None:
    """benthos StreamTestCheckpointCapture: ack A, B, D; nack C and E; restart resumes after B."""
    tracker = WatermarkTracker()
    tickets = {
        name: await tracker.track({S1: pos(S1, ts)}) for name, ts in zip("ABCDE", range(10, 15), strict=True)
    }
    for name in "BDA":
        tickets[name].resolve()
    assert tracker.committed() == {S1: pos(S1, 11)}  # A, B done; C holds D back
    assert tracker.unresolved == 2

    # "Restart": a new tracker starts from the saved watermark; C, D, E are read again.
    restarted = WatermarkTracker(start=tracker.committed())
    assert restarted.committed() == {S1: pos(S1, 11)}
    again = [await restarted.track({S1: pos(S1, ts)}) for ts in (12, 13, 14)]
    again[2].resolve()
    assert restarted.committed() == {S1: pos(S1, 11)}
    again[0].resolve()
    again[1].resolve()
    assert restarted.committed() == {S1: pos(S1, 14)}


async def test_streams_are_independent_and_batches_span_streams() -> None:
    tracker = WatermarkTracker(start={S2: pos(S2, 1)})
    first = await tracker.track({S1: pos(S1, 5), S2: pos(S2, 5)}, weight=2)
    second = await tracker.track({S1: pos(S1, 6)}, weight=1)
    second.resolve()
    assert tracker.committed() == {S2: pos(S2, 1)}  # S1 has nothing contiguous yet
    first.resolve()
    first.resolve()  # idempotent
    assert tracker.committed() == {S1: pos(S1, 6), S2: pos(S2, 5)}
    assert tracker.in_flight == 0
    assert tracker.last_tracked() == {S1: pos(S1, 6), S2: pos(S2, 5)}


async def test_order_is_cql_timeuuid_order_not_uuid_byte_order() -> None:
    tracker = WatermarkTracker()
    # Same timestamp; low bytes 0x7f.. and 0x80..: CQL compares them as signed bytes, so 0x80 < 0x7f.
    a, b = pos(S1, 7, 0x8000000000000000), pos(S1, 7, 0x7F00000000000000)
    assert a.sort_key() < b.sort_key() and a.time.bytes > b.time.bytes
    await tracker.track({S1: a})
    await tracker.track({S1: b})
    with pytest.raises(ValueError, match="older than tracked"):
        await tracker.track({S1: a})


async def test_equal_positions_repeat_for_empty_windows() -> None:
    tracker = WatermarkTracker()
    t1 = await tracker.track({S1: pos(S1, 3)})
    t2 = await tracker.track({S1: pos(S1, 3)}, weight=0)
    t2.resolve()
    t1.resolve()
    assert tracker.committed() == {S1: pos(S1, 3)}


async def test_stream_key_must_match_position() -> None:
    with pytest.raises(ValueError, match="upto key"):
        await WatermarkTracker().track({S1: pos(S2, 1)})


async def test_track_blocks_past_the_cap_until_something_resolves() -> None:
    tracker = WatermarkTracker(max_in_flight=10)
    first = await tracker.track({S1: pos(S1, 1)}, weight=8)
    blocked = asyncio.ensure_future(tracker.track({S1: pos(S1, 2)}, weight=5))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not blocked.done()
    first.resolve()
    second = await asyncio.wait_for(blocked, 5)
    assert tracker.in_flight == 5
    # A batch bigger than the whole cap still goes through once nothing is in flight.
    second.resolve()
    huge = await asyncio.wait_for(tracker.track({S1: pos(S1, 3)}, weight=50), 5)
    assert tracker.in_flight == 50
    huge.resolve()
    assert tracker.committed() == {S1: pos(S1, 3)}


async def test_oldest_unresolved_names_each_stream_held_back() -> None:
    """What a lag figure needs for a stream with nothing applied yet (its first batch is stuck)."""
    tracker = WatermarkTracker(start={S2: pos(S2, 1)})
    a = await tracker.track({S1: pos(S1, 5)})
    await tracker.track({S1: pos(S1, 7), S2: pos(S2, 8)})
    assert tracker.committed() == {S2: pos(S2, 1)}
    assert tracker.oldest_unresolved() == {S1: pos(S1, 5), S2: pos(S2, 8)}
    a.resolve()
    assert tracker.oldest_unresolved() == {S1: pos(S1, 7), S2: pos(S2, 8)}
