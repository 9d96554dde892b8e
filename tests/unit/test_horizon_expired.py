"""Time until data loss at or below zero (the lag passed the CDC log TTL): an error, not the
"approaches" warning; reported at once even right after a warning, independent of the warning
threshold, rate-limited like the warning, and followed by one "recovered" event."""

from __future__ import annotations

import io
import json

from cdcd.ops import emit
from cdcd.ops.horizon import DataLossWatch, Observation
from cdcd.ops.logging import configure


def test_passing_the_ttl_escalates_at_once_then_repeats_every_period() -> None:
    w = DataLossWatch(30.0, repeat=300.0)  # ttl 60: threshold 30 s
    first = w.observe("a", "pg", 60, 40.0, now=0.0)
    assert first is not None and first.kind == "warning"
    gone = w.observe("a", "pg", 60, 61.0, now=5.0)  # within the repeat period, but worse
    assert gone is not None and gone.kind == "expired"
    assert (gone.remaining, gone.lag, gone.ttl, gone.threshold) == (-1.0, 61.0, 60, 30.0)
    assert w.observe("a", "pg", 60, 70.0, now=100.0) is None
    assert w.observe("a", "pg", 60, 50.0, now=200.0) is None  # catching up: no new warning yet
    again = w.observe("a", "pg", 60, 80.0, now=306.0)
    assert again is not None and again.kind == "expired"
    back = w.observe("a", "pg", 60, 1.0, now=307.0)
    assert back is not None and back.kind == "recovered"
    assert w.observe("a", "pg", 60, 1.0, now=308.0) is None


def test_exactly_at_the_ttl_counts_as_expired() -> None:
    obs = DataLossWatch(30.0).observe("a", "pg", 60, 60.0, now=0.0)
    assert obs is not None and obs.kind == "expired" and obs.remaining == 0.0


def test_expired_is_reported_with_the_warning_turned_off() -> None:
    w = DataLossWatch(0.0)
    assert w.observe("a", "pg", 60, 59.0, now=0.0) is None  # no warning
    gone = w.observe("a", "pg", 60, 65.0, now=1.0)
    assert gone is not None and gone.kind == "expired" and gone.threshold == 0.0
    back = w.observe("a", "pg", 60, 2.0, now=2.0)
    assert back is not None and back.kind == "recovered"


def test_a_log_that_never_expires_never_reports() -> None:
    assert DataLossWatch(30.0).observe("a", "pg", 0, 10.0**7, now=0.0) is None


def test_expired_is_logged_as_an_error_with_its_figures() -> None:
    stream = io.StringIO()
    configure(level="info", fmt="json", stream=stream)
    try:
        emit.data_loss_horizon(Observation("expired", "ks.t", "ch", -12.34, 72.34, 60, 30.0))
    finally:
        configure(level="warning", fmt="json")
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert record["level"] == "error"
    assert record["message"].startswith("destination lag exceeds the CDC log TTL")
    assert (record["table"], record["destination"], record["cdc_ttl"]) == ("ks.t", "ch", 60)
    assert (record["lag_seconds"], record["time_until_data_loss_seconds"]) == (72.3, -12.3)
