"""RetryPolicy backoff, retry_call with the manual clock, and the circuit breaker (R-40)."""

from __future__ import annotations

import asyncio

import pytest

from cdcd.errors import BadRows, SinkUnavailable
from cdcd.flow import CircuitBreaker, ManualClock, RetryPolicy, is_retriable, retry_call


def test_bounds_grow_exponentially_up_to_the_max() -> None:
    policy = RetryPolicy()  # R-40 defaults: 1 s initial, x2, 60 s max
    assert [policy.bound(a) for a in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.bound(10_000) == 60  # no overflow after a very long outage


def test_full_jitter_spans_zero_to_the_bound() -> None:
    policy = RetryPolicy(initial=1, max=60)
    assert policy.delay(3, rand=lambda: 0.0) == 0.0
    assert policy.delay(3, rand=lambda: 0.5) == 2.0
    assert policy.delay(3, rand=lambda: 0.999) == pytest.approx(3.996)
    assert RetryPolicy(jitter=False).delay(3) == 4.0
    with pytest.raises(ValueError, match="attempt"):
        policy.bound(0)


def test_attempt_budget() -> None:
    assert not RetryPolicy(max_attempts=3).exhausted(2)
    assert RetryPolicy(max_attempts=3).exhausted(3)
    assert not RetryPolicy(max_attempts=None).exhausted(10**6)


def test_errors_classify_themselves_and_timeouts_are_retriable() -> None:
    assert is_retriable(SinkUnavailable("down"))
    assert is_retriable(TimeoutError())
    assert not is_retriable(BadRows({0: "bad"}))
    assert not is_retriable(ValueError("bug"))


async def test_retry_call_waits_with_backoff_on_the_injected_clock() -> None:
    clock = ManualClock()
    calls: list[float] = []
    waits: list[float] = []

    async def flaky() -> str:
        calls.append(clock.monotonic())
        if len(calls) < 4:
            raise SinkUnavailable("connection refused")
        return "ok"

    policy = RetryPolicy(jitter=False, max_attempts=None)
    task = asyncio.ensure_future(
        retry_call(flaky, policy, clock, on_retry=lambda attempt, exc, delay: waits.append(delay))
    )
    assert await clock.run_until(task) == "ok"
    assert waits == [1.0, 2.0, 4.0]
    start = calls[0]
    assert [c - start for c in calls] == [0.0, 1.0, 3.0, 7.0]


async def test_retry_call_gives_up_after_max_attempts_and_never_retries_permanent_errors() -> None:
    clock = ManualClock()
    n = 0

    async def down() -> None:
        nonlocal n
        n += 1
        raise TimeoutError("write timed out")

    with pytest.raises(TimeoutError):
        await clock.run_until(retry_call(down, RetryPolicy(max_attempts=3), clock))
    assert n == 3

    async def broken() -> None:
        nonlocal n
        n += 1
        raise BadRows({0: "22P02"})

    n = 0
    with pytest.raises(BadRows):
        await retry_call(broken, RetryPolicy(), clock)
    assert n == 1


def test_breaker_opens_after_five_consecutive_failures_and_half_opens_after_30s() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock)
    for _ in range(4):
        assert breaker.wait_time() == 0
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.wait_time() == 30.0
    clock.advance(29)
    assert breaker.wait_time() == 1.0
    clock.advance(1)
    assert breaker.state == "half-open"
    assert breaker.wait_time() == 0  # this caller holds the single trial
    assert breaker.wait_time() == breaker.probe_interval  # others wait
    breaker.record_failure()  # the trial failed: open again for 30 s
    assert breaker.state == "open"
    clock.advance(30)
    assert breaker.wait_time() == 0
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_breaker_success_resets_the_consecutive_count_and_abandon_frees_the_trial() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, failure_threshold=2, reset_timeout=5)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    clock.advance(5)
    assert breaker.wait_time() == 0
    breaker.abandon()  # the trial call was cancelled
    assert breaker.wait_time() == 0
