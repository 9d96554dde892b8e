"""Version-guard ordering of the strategies and the in-batch guard (cdcd.sinks.outcome; pure)."""

from __future__ import annotations

from typing import Any

import pytest

from cdcd.events import Op
from cdcd.sinks import Skipped, WriteOutcome
from cdcd.sinks.outcome import compare, in_batch
from tests.contract.builders import ev


@pytest.mark.parametrize(
    ("strategy", "event", "row", "expected"),
    [
        ("timestamp", (1, 200, 0), (9, 100, 0), 1),  # later write wins, version ignored
        ("timestamp", (9, 100, 0), (1, 200, 0), -1),
        ("timestamp", (None, 100, 1), (None, 100, 1), 0),  # the row's own change: a replay
        ("timestamp", (None, 100, 1), (None, 100, 0), 1),  # batch seq breaks write-time ties
        ("version", (9, 100, 0), (1, 200, 0), 1),  # higher version, earlier write: applies
        ("version", (1, 300, 0), (9, 200, 0), -1),  # lower version, later write: stale
        ("version", (5, 100, 0), (5, 200, 0), 1),  # equal versions apply in stream order
        ("version", (None, 100, 0), (5, 200, 0), 1),  # no version carried: the row's, a tie
        ("version", (5, 200, 0), (5, 200, 0), 0),
        ("hybrid", (5, 100, 0), (5, 200, 0), -1),  # tie on version: write time decides
        ("hybrid", (5, 300, 0), (5, 200, 0), 1),
        ("hybrid", (4, 900, 0), (5, 200, 0), -1),
        ("hybrid", (5, 200, 0), (5, 200, 0), 0),
    ],
)
def test_compare(
    strategy: str, event: tuple[Any, int, int], row: tuple[Any, int, int], expected: int
) -> None:
    assert compare(strategy, event, row) == expected


def test_in_batch_skips_lower_versions_after_higher_ones_of_the_same_row() -> None:
    k1, k2 = {"pk": 1}, {"pk": 2}
    events = [
        ev(Op.INSERT, k1, wt=100, values={"rev": 5, "v": "a"}),
        ev(Op.UPDATE, k1, wt=200, values={"rev": 3, "v": "b"}),  # stale against the first
        ev(Op.UPDATE, k2, wt=250, values={"rev": 1, "v": "c"}),  # another row
        ev(Op.UPDATE, k1, wt=300, values={"v": "d"}),  # no version: keeps 5, applies
        ev(Op.ROW_DELETE, k1, wt=400),
        ev(Op.INSERT, k1, wt=500, values={"rev": 1, "v": "e"}),  # after a delete: a new row
    ]
    keep, skipped = in_batch(events, "version", "rev")
    assert keep == [0, 2, 3, 4, 5]
    assert skipped == [Skipped(1, "stale", row_write_time_us=100, row_version=5)]
    assert in_batch(events, "timestamp", None) == (list(range(6)), [])


def test_outcome_counts_without_detail_are_stale() -> None:
    assert WriteOutcome(applied=1, skipped_stale=2).stale == 2
    detail = (Skipped(0, "duplicate"), Skipped(1, "stale", row_write_time_us=5))
    out = WriteOutcome(applied=0, skipped_stale=2, skipped=detail)
    assert (out.stale, out.duplicates) == (1, 1)
