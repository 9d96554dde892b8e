"""Time until data loss (R-43): the figure, the threshold and when it is logged."""

from __future__ import annotations

from types import SimpleNamespace

from cdcd.ops.horizon import DataLossWatch, fold_lag, threshold_for, time_until_loss


def st(table: str, dest: str, lag: float | None, state: str = "running") -> SimpleNamespace:
    return SimpleNamespace(table=table, destination=dest, lag_seconds=lag, state=state)


def test_time_until_loss_is_ttl_minus_lag() -> None:
    assert time_until_loss(86_400, 600.0) == 85_800.0
    assert time_until_loss(60, 75.0) == -15.0  # changes already expired
    assert time_until_loss(0, 10.0) is None  # the log never expires
    assert time_until_loss(60, None) is None


def test_lag_folds_to_the_slowest_unfinished_group() -> None:
    lags = fold_lag([st("a", "pg", 3.0), st("a", "pg", 9.0), st("a", "pg", 50.0, "done"),
                     st("a", "ch", None), st("b", "ch", 1.5)])  # fmt: skip
    assert lags == {("a", "pg"): 9.0, ("b", "ch"): 1.5}


def test_threshold_is_capped_at_half_the_ttl() -> None:
    assert threshold_for(6 * 3600, 86_400) == 6 * 3600
    assert threshold_for(6 * 3600, 3600) == 1800


def test_warns_once_repeats_later_and_says_when_recovered() -> None:
    w = DataLossWatch(1000.0, repeat=300.0)
    assert w.observe("a", "pg", 86_400, 10.0, now=0.0) is None
    first = w.observe("a", "pg", 86_400, 85_500.0, now=1.0)
    assert first is not None and first.kind == "warning"
    assert (first.remaining, first.lag, first.ttl, first.threshold) == (900.0, 85_500.0, 86_400, 1000.0)
    assert w.observe("a", "pg", 86_400, 85_600.0, now=200.0) is None  # still below: not repeated yet
    again = w.observe("a", "pg", 86_400, 85_700.0, now=302.0)
    assert again is not None and again.kind == "warning"
    assert w.observe("b", "pg", 86_400, 85_700.0, now=302.0) is not None  # keys are independent
    back = w.observe("a", "pg", 86_400, 5.0, now=303.0)
    assert back is not None and back.kind == "recovered"
    assert w.observe("a", "pg", 86_400, 5.0, now=304.0) is None


def test_zero_threshold_and_tables_without_ttl_never_warn() -> None:
    assert DataLossWatch(0.0).observe("a", "pg", 60, 59.0, now=0.0) is None
    assert DataLossWatch(100.0).observe("a", "pg", 0, 10**6, now=0.0) is None
