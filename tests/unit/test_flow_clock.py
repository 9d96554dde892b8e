"""ManualClock and wait_first: time-based code tested without sleeping."""

from __future__ import annotations

import asyncio

import pytest

from cdcd.flow import ManualClock, SystemClock, wait_first


async def test_advance_wakes_sleepers_in_deadline_order() -> None:
    clock = ManualClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 5), ("a", 2), ("c", 9))]
    await clock.until_sleeping(3)
    clock.advance(4)
    await asyncio.sleep(0)
    assert woke == ["a"]
    clock.advance(5)
    await asyncio.gather(*tasks)
    assert woke == ["a", "b", "c"]
    assert clock.time() - clock.monotonic() == pytest.approx(1_700_000_000.0 - 1000.0)


async def test_cancelled_sleepers_are_not_counted() -> None:
    clock = ManualClock()
    task = asyncio.ensure_future(clock.sleep(10))
    await clock.until_sleeping()
    task.cancel()
    await asyncio.sleep(0)
    assert clock.sleepers == 0 and clock.next_deadline() is None
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)


async def test_wait_first_on_the_manual_clock() -> None:
    clock = ManualClock()
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    pending = asyncio.ensure_future(wait_first(clock, never, 30))
    await clock.until_sleeping()
    clock.advance(30)
    assert await pending == (False, None)
    assert never.cancelled()

    async def quick() -> int:
        return 7

    assert await wait_first(clock, quick(), 30) == (True, 7)
    assert await wait_first(clock, quick(), None) == (True, 7)


async def test_wait_first_on_the_system_clock() -> None:
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert await wait_first(SystemClock(), never, 0.01) == (False, None)


async def test_run_until_jumps_time() -> None:
    clock = ManualClock()

    async def slow() -> float:
        await clock.sleep(3600)
        return clock.monotonic()

    start = clock.monotonic()
    assert await clock.run_until(slow()) == start + 3600
