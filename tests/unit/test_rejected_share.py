"""The rejected share over 5 minutes and its alert (cdcd.ops.rejections, FlowTelemetry)."""

from __future__ import annotations

from cdcd.flow.contracts import PipelineId
from cdcd.ops import emit
from cdcd.ops import metrics as m
from cdcd.ops.rejections import RejectedShare


def test_share_window_and_alert_edges() -> None:
    now = [0.0]
    s = RejectedShare(0.05, min_events=20, clock=lambda: now[0])
    key = ("ks.t", "pg")
    s.processed(key, 10)
    s.rejected(key, 5)
    assert s.check(key) == (None, None)  # too few events to judge
    s.processed(key, 90)
    share, change = s.check(key)
    assert share == 0.05 and change is None  # at the ratio, not above
    s.rejected(key, 1)
    s.processed(key, 1)
    assert s.check(key)[1] is True
    assert s.check(key)[1] is None  # reported once
    now[0] = 301.0  # the window slid past every bucket
    s.processed(key, 100)
    assert s.check(key) == (0.0, False)


def test_telemetry_counts_rejections_by_queue_and_reason() -> None:
    pid = PipelineId(destination="pgx", table="ks.share", group="g")
    tel = emit.FlowTelemetry(alert_ratio=0.1)
    before = m.REJECTED.labels("ks.share", "pgx", "validation", "max_length", emit.replica())._value.get()
    tel.processed(pid, 20)
    tel.queued(pid, "validation", {"max_length": 3, "not_null": 1})
    assert (
        m.REJECTED.labels("ks.share", "pgx", "validation", "max_length", emit.replica())._value.get()
        == before + 3
    )
    assert m.REJECTED_SHARE.labels("ks.share", "pgx", emit.replica())._value.get() == 0.2
    assert m.REJECTED_ALERT.labels("ks.share", "pgx", emit.replica())._value.get() == 1
