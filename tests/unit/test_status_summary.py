"""``build_status`` and its summary (what /status shows without ``?verbose=true``)."""

from __future__ import annotations

import msgspec

from cdcd.ops.http import build_status, summarize


class Status(msgspec.Struct, kw_only=True):
    """A PipelineStatus with the branch ``mode`` field."""

    destination: str = "pg"
    table: str = "shop.orders"
    group: str
    state: str = "running"
    mode: str = "shared"
    positions: dict[str, str]
    checkpoint: dict[str, str]
    lag_seconds: float | None = 2.0
    events_applied: int = 5
    queue_depth: int = 1


def test_summary_drops_stream_positions_and_keeps_the_rest() -> None:
    statuses = [
        Status(group="1:0", positions={"aa" * 16: "t1", "bb" * 16: "t2"}, checkpoint={"aa" * 16: "t0"}),
        Status(group="1:1", mode="catching-up", positions={"cc" * 16: "t3"}, checkpoint={}, lag_seconds=9.0),
    ]
    full = build_status(statuses, ttls={"shop.orders": 3600}, replica="r1")
    short = summarize(full)
    dest, full_dest = (s["tables"]["shop.orders"]["destinations"]["pg"] for s in (short, full))
    assert short["replica"] == "r1"
    totals = {k: v for k, v in dest.items() if k != "groups"}
    assert totals == {k: v for k, v in full_dest.items() if k != "groups"}
    assert {
        k: totals[k] for k in ("state", "lag_seconds", "events_applied", "time_until_data_loss_seconds")
    } == {
        "state": "running",
        "lag_seconds": 9.0,
        "events_applied": 10,
        "time_until_data_loss_seconds": 3591.0,
    }
    assert dest["groups"] == {
        "1:0": {"state": "running", "mode": "shared", "lag_seconds": 2.0, "events_applied": 5,
                "queue_depth": 1, "streams": 2},
        "1:1": {"state": "running", "mode": "catching-up", "lag_seconds": 9.0, "events_applied": 5,
                "queue_depth": 1, "streams": 1},
    }  # fmt: skip
    assert full_dest["groups"]["1:0"]["positions"] == {"aa" * 16: "t1", "bb" * 16: "t2"}
    assert full_dest["groups"]["1:1"]["mode"] == "catching-up"
    assert full_dest["groups"]["1:0"]["checkpoint"] == {"aa" * 16: "t0"}
    # the summary is a copy: the full status is unchanged
    assert "positions" in full["tables"]["shop.orders"]["destinations"]["pg"]["groups"]["1:0"]


def test_summary_of_a_waiting_destination() -> None:
    full = build_status([], stored_lags={("shop.orders", "ch"): 30.0}, ttls={"shop.orders": 0})
    assert summarize(full)["tables"] == full["tables"]
    assert full["tables"]["shop.orders"]["destinations"]["ch"]["state"] == "waiting"
