"""``ReadLimiter``: the concurrency cap, the catch-up readers' own cap, and the rate bucket."""

from __future__ import annotations

import asyncio

import pytest

from cdcd.scylla.limits import ReadLimiter


async def test_pages_in_flight_never_exceed_the_cap() -> None:
    limiter = ReadLimiter(max_concurrent=3)
    peak = 0

    async def page() -> None:
        nonlocal peak
        async with limiter.page():
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(page() for _ in range(20)))
    assert peak == 3 and limiter.in_flight == 0


async def test_catch_up_readers_hold_their_own_smaller_share() -> None:
    limiter = ReadLimiter(max_concurrent=8)  # catch-up: 8 // 8 = 1 slot
    catch_up = limiter.catch_up()
    counts = {"shared": 0, "catch-up": 0}
    peaks = {"shared": 0, "catch-up": 0}

    async def page(kind: str) -> None:
        slots = limiter if kind == "shared" else catch_up
        async with slots.page():
            counts[kind] += 1
            peaks[kind] = max(peaks[kind], counts[kind])
            await asyncio.sleep(0.01)
            counts[kind] -= 1

    await asyncio.gather(*(page("catch-up") for _ in range(6)), *(page("shared") for _ in range(10)))
    assert peaks["catch-up"] == 1 and peaks["shared"] == 7  # catch-up pages count against the total
    assert ReadLimiter(max_concurrent=32).catch_up() is not None


async def test_rate_bucket_allows_one_second_of_burst_then_paces() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = ReadLimiter(max_rate=1000, clock=lambda: now[0], sleep=fake_sleep)
    for _ in range(5):  # 5 pages of 500 rows
        async with limiter.page():
            pass
        limiter.spend(500)
    # 1000 rows of burst (pages 1-2), page 3 runs the bucket into debt (-500), pages 4 and 5 each
    # wait 0.5 s for it to be paid back: 2500 rows by t = 1.0 s, never more than rate x t + 1000 + 500
    assert now[0] == pytest.approx(1.0) and slept == [pytest.approx(0.5), pytest.approx(0.5)]
    assert limiter.rows == 2500


def test_caps_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        ReadLimiter(max_concurrent=-1)
