"""Batcher: a batch closes on max_rows, max_bytes or max_wait, whichever comes first."""

from __future__ import annotations

import pytest

from cdcd.flow import Batcher, BatchPolicy, ManualClock


def make(
    max_rows: int = 3, max_bytes: int | None = None, max_wait: float = 2.0
) -> tuple[Batcher[int], ManualClock]:
    clock = ManualClock()
    policy = BatchPolicy(max_rows=max_rows, max_bytes=max_bytes, max_wait=max_wait)
    return Batcher(policy, clock=clock, rows_of=lambda n: 1, bytes_of=lambda n: n), clock


def test_empty_batcher_has_no_deadline() -> None:
    b, _ = make()
    assert b.until_next() is None
    assert b.flush() == []


@pytest.mark.parametrize(
    ("policy", "items", "triggered_at"),
    [
        pytest.param({"max_rows": 3}, [1, 1, 1, 1], 3, id="closed by rows"),
        pytest.param({"max_rows": 100, "max_bytes": 10}, [4, 4, 4, 4], 3, id="closed by bytes"),
        pytest.param({"max_rows": 100, "max_bytes": 10}, [50], 1, id="one oversized item closes at once"),
    ],
)
def test_add_reports_when_the_policy_triggers(
    policy: dict[str, int], items: list[int], triggered_at: int
) -> None:
    b, _ = make(**policy)
    results = [b.add(i) for i in items[:triggered_at]]
    assert results == [False] * (triggered_at - 1) + [True]
    assert b.until_next() == 0.0
    assert b.flush() == items[:triggered_at]
    assert len(b) == 0 and b.rows == 0 and b.bytes == 0


def test_batch_closed_by_time() -> None:
    b, clock = make(max_wait=2.0)
    clock.advance(100)  # time before the first item does not count
    assert b.add(1) is False
    assert b.until_next() == 2.0
    clock.advance(1.5)
    assert b.add(2) is False
    assert b.until_next() == pytest.approx(0.5)
    clock.advance(0.5)
    assert b.until_next() == 0.0
    assert b.flush() == [1, 2]
    assert b.until_next() is None


def test_weights_default_to_one_row_and_zero_bytes() -> None:
    b: Batcher[str] = Batcher(BatchPolicy(max_rows=2, max_bytes=1, max_wait=1.0), clock=ManualClock())
    assert b.add("a") is False
    assert b.add("b") is True
