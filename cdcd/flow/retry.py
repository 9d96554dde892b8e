"""Retry with exponential backoff and full jitter, and a per-destination circuit breaker (R-40).

* ``RetryPolicy``: frozen config (1 s initial, 60 s max, x2, full jitter, ``max_attempts``).
  ``policy.delay(attempt)`` is the wait before retry number ``attempt`` (1-based):
  ``uniform(0, min(max, initial * multiplier ** (attempt - 1)))`` ("full jitter", AWS
  architecture blog "Exponential Backoff And Jitter"; Vector ``retries.rs``).
* ``retry_call(fn, policy, clock)``: call until success; only errors that classify themselves as
  retriable (``CdcdError.retriable``, and ``TimeoutError``: a timeout is never permanent) are
  retried, at most ``max_attempts`` times (None: forever).
* ``CircuitBreaker``: one per destination, shared by all its pipelines. Opens after
  ``failure_threshold`` consecutive failures; after ``reset_timeout`` it is half-open and lets a
  single trial call through; success closes it, failure re-opens it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal, TypeVar

import msgspec

from cdcd.flow.clock import Clock

__all__ = ["BreakerState", "CircuitBreaker", "RetryPolicy", "is_retriable", "retry_call"]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half-open"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Backoff between attempts of one operation."""

    # Upper bound of the first wait, seconds.
    initial: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    # Upper bound of any wait, seconds.
    max: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Growth of the bound per attempt.
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    # Attempts in total before giving up (rows then go to the dead-letter store); None: forever.
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] | None = 10
    # Full jitter (uniform in [0, bound]); False waits exactly the bound.
    jitter: bool = True

    def bound(self, attempt: int) -> float:
        """The un-jittered wait before retry ``attempt`` (1 = the first retry)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        exp = min(attempt - 1, 64)  # avoid float overflow for very long outages
        return min(self.max, self.initial * self.multiplier**exp)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry ``attempt``: full jitter over ``bound(attempt)``."""
        b = self.bound(attempt)
        return b * rand() if self.jitter else b

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` failed attempts used up the budget."""
        return self.max_attempts is not None and attempts >= self.max_attempts


def is_retriable(exc: BaseException) -> bool:
    """Errors say themselves whether retrying can help; timeouts always can."""
    if isinstance(exc, TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    clock: Clock,
    *,
    retriable: Callable[[BaseException], bool] = is_retriable,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    rand: Callable[[], float] = random.random,
) -> T:
    """Await ``fn()`` until it succeeds. Non-retriable errors, and the last error once
    ``policy.max_attempts`` attempts failed, propagate. ``on_retry(attempt, error, delay)`` is
    called before each wait (for logs and metrics)."""
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            attempt += 1
            if not retriable(exc) or policy.exhausted(attempt):
                raise
            delay = policy.delay(attempt, rand)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await clock.sleep(delay)


class CircuitBreaker:
    """Consecutive-failure breaker for one destination. Synchronous; one event loop.

    Callers ask ``wait_time()`` before each call: 0 means "go" (in half-open state the caller
    then holds the single trial), otherwise sleep that long and ask again. They must report the
    call with ``record_success()`` or ``record_failure()``; errors that say nothing about the
    destination's health (bad rows) count as success.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        probe_interval: float = 1.0,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.probe_interval = probe_interval
        self.failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self.clock.monotonic() - self._opened_at >= self.reset_timeout:
            return "half-open"
        return "open"

    def wait_time(self) -> float:
        """0 to proceed now; otherwise seconds to wait before asking again."""
        state = self.state
        if state == "closed":
            return 0.0
        if state == "open":
            assert self._opened_at is not None
            return self._opened_at + self.reset_timeout - self.clock.monotonic()
        if self._trial:
            return self.probe_interval  # someone else's trial call is in progress
        self._trial = True
        return 0.0

    def record_success(self) -> None:
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def abandon(self) -> None:
        """The call was cancelled without an outcome: give the half-open trial back."""
        self._trial = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._trial or self.failures >= self.failure_threshold:
            self._opened_at = self.clock.monotonic()
        self._trial = False
