"""Pure parts of ``cdcd.snapshot``: token ranges, source rows -> change events, positions,
the comparable form of reconcile, the progress line, the CLI arguments."""

from __future__ import annotations

import io
import itertools
import uuid

import pytest

from cdcd.cli import parse_args
from cdcd.events import Op, timeuuid_to_micros
from cdcd.schema import CqlType
from cdcd.snapshot.bar import ProgressBar, fmt_duration
from cdcd.snapshot.source import MAX_TOKEN, MIN_TOKEN, SourceRow, snapshot_position, token_ranges
from cdcd.snapshot.targets import comparable


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
def test_token_ranges_cover_the_ring_without_gaps(n: int) -> None:
    ranges = token_ranges(n)
    assert len(ranges) == n
    assert ranges[0][0] == MIN_TOKEN and ranges[-1][1] == MAX_TOKEN
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo == hi + 1
    assert all(lo <= hi for lo, hi in ranges)
    with pytest.raises(ValueError, match=">= 1"):
        token_ranges(0)


def test_row_events_group_cells_by_write_time_oldest_first() -> None:
    row = SourceRow(
        {"p": 1, "c": 2},
        {"a": "x", "b": 5, "n": None, "s": [1, 2], "e": None},
        {"a": 1000, "b": 3000, "n": None, "s": None, "e": None},
        token=7,
        multicell=frozenset({"s", "e"}),
    )
    events = row.events("ks.t")
    assert [(e.op, e.write_time_us) for e in events] == [(Op.INSERT, 1000), (Op.UPDATE, 3000)]
    assert events[0].values == {"a": "x"} and events[0].deleted == frozenset()
    # the newest group carries b, the nulls, and the multicell columns (overwritten: clear + add)
    assert events[1].values == {"b": 5, "n": None, "s": [1, 2]}
    assert events[1].deleted == frozenset({"s", "e"})
    assert all(e.key == {"p": 1, "c": 2} for e in events)
    # positions name the change: distinct per (key, write time), stable across runs
    assert events[0].pos != events[1].pos
    assert events[0].pos == snapshot_position({"p": 1, "c": 2}, 1000)
    assert timeuuid_to_micros(events[1].pos.time) == 3000
    assert uuid.UUID(bytes=events[0].pos.time.bytes).version == 1


def test_row_with_only_a_key_is_one_insert_at_the_read_time() -> None:
    row = SourceRow({"p": 1}, {"a": None}, {"a": None}, token=0)
    (event,) = row.events("ks.t", read_time_us=42)
    assert (event.op, event.write_time_us, event.values) == (Op.INSERT, 42, {"a": None})


def test_full_event_is_one_change_with_every_column() -> None:
    row = SourceRow({"p": 1}, {"a": "x", "s": None}, {"a": 9, "s": None}, token=0, multicell=frozenset({"s"}))
    ev = row.full_event("ks.t", 10)
    assert (ev.op, ev.write_time_us, ev.values, ev.deleted) == (Op.INSERT, 10, {"a": "x"}, frozenset({"s"}))


def test_comparable_forms() -> None:
    int_set = CqlType("set", (CqlType("int"),))
    assert comparable(int_set, [3, 1, 2], "postgres") == comparable(int_set, [1, 2, 3], "postgres")
    assert comparable(int_set, [], "postgres") is None
    assert comparable(CqlType("double"), float("nan"), "postgres") == comparable(
        CqlType("double"), float("nan"), "x"
    )
    m = CqlType("map", (CqlType("text"), CqlType("int")))
    assert comparable(m, {"b": 1, "a": 2}, "clickhouse") == comparable(m, {"a": 2, "b": 1}, "clickhouse")
    assert comparable(CqlType("duration"), (1, 2, 1_000_999), "postgres") == (1, 2, 1_000_000)


def test_progress_line() -> None:
    out = io.StringIO()
    bar = ProgressBar("snapshot ks.t -> pg", stream=out)
    bar.update(final=True, rows=12345, done=8, total=32, rate=2500.0, eta=75.0)
    line = out.getvalue()
    assert line.endswith("\n") and "12,345 rows" in line and "8/32 ranges" in line
    assert "2,500 rows/s" in line and "ETA 0:01:15" in line and "25%" in line
    assert fmt_duration(None) == "?"


def test_cli_arguments() -> None:
    a = parse_args(["snapshot", "--config", "c.toml", "--table", "ks.t", "--ranges", "8"])
    assert (a.command, a.table, a.destination, a.ranges, a.restart) == ("snapshot", "ks.t", None, 8, False)
    a = parse_args(
        ["reconcile", "-c", "c.toml", "--table", "ks.t", "--destination", "pg", "--repair", "--json"]
    )
    assert (a.command, a.destination, a.repair, a.json, a.ranges, a.settle) == (
        "reconcile",
        "pg",
        True,
        True,
        64,
        30.0,
    )
    with pytest.raises(SystemExit):
        parse_args(["snapshot", "--config", "c.toml", "--table", "ks.t", "--ranges", "0"])
