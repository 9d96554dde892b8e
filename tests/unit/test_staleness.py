"""The staleness stage (pure): events written longer than max_age before they are read are
rejected with reason too_old, both times in the reason; the rest pass untouched."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcd.config import loads
from cdcd.events import ChangeEvent, Op, Position
from cdcd.stages import Chain
from cdcd.stages.staleness import StalenessStage, off_reason

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def ev(age_s: float, n: int = 0) -> ChangeEvent:
    return ChangeEvent(
        table="ks.t", pos=Position(generation=1, stream_id=b"\x01" * 16, time=uuid.uuid1()), batch_seq=n,
        op=Op.INSERT, write_time_us=int((NOW - age_s) * 1_000_000), key={"id": n},
    )  # fmt: skip


# (ages within 1 ms of the threshold are left out: the write time is whole microseconds)
@given(
    st.lists(
        st.floats(min_value=0, max_value=30 * 86400).filter(lambda a: abs(a - 7 * 86400) > 1e-3), max_size=30
    )
)
def test_too_old_split(ages: list[float]) -> None:
    stage = StalenessStage(7 * 86400, now=lambda: NOW)
    events = [ev(a, i) for i, a in enumerate(ages)]
    passed, rejected = Chain([stage]).run(events)
    assert [e.key["id"] for e in passed] == [i for i, a in enumerate(ages) if a <= 7 * 86400]
    assert [r.event.key["id"] for r in rejected] == [i for i, a in enumerate(ages) if a > 7 * 86400]


def test_reason_names_both_times_and_the_threshold() -> None:
    stage = StalenessStage(7 * 86400, now=lambda: NOW)
    out = stage.process([ev(8 * 86400)])
    (r,) = out.rejected
    assert (r.stage, r.label) == ("staleness", "too_old")  # type: ignore[attr-defined]
    assert r.reason == (
        "too_old: event written at 2027-01-07T08:00:00.000Z, read at 2027-01-15T08:00:00.000Z "
        "(8d old; staleness.max_age 7d)"
    )


def test_zero_max_age_is_not_a_stage() -> None:
    with pytest.raises(ValueError):
        StalenessStage(0)


BASE = (
    '[destinations.pg]\ntype = "postgres"\ndsn = "${PG}"\n[[tables]]\nsource = "a.b"\ndestinations = ["pg"]\n'
)


@pytest.mark.parametrize(
    ("staleness", "backfill", "why"),
    [
        ("", False, None),
        ("", True, "cdcd run --backfill"),
        ("[staleness]\nenabled = false\n", False, "staleness.enabled = false"),
        ('[staleness]\nmax_age = "0"\n', False, 'staleness.max_age = "0"'),
    ],
)
def test_off_reason(staleness: str, backfill: bool, why: str | None) -> None:
    cfg = loads(staleness + BASE, env={"PG": "postgresql://u@h/db"})
    assert cfg.staleness.max_age == (0 if "max_age" in staleness else 7 * 86400)
    assert off_reason(cfg, backfill=backfill) == why
