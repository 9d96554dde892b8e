"""Reader helpers: timeuuid window bounds, window planning, grouping rows by end-of-batch."""

from __future__ import annotations

import uuid
from typing import Any

from cassandra.util import min_uuid_from_time

from cdcd.events import timeuuid_sort_key, timeuuid_to_micros
from cdcd.scylla.generations import start_floor_ms, to_ms
from cdcd.scylla.session import parse_consistency, parse_host
from cdcd.scylla.windows import GroupAssembler, max_pos, min_timeuuid, plan_window


def _real_timeuuid(micros: int, low: int) -> uuid.UUID:
    """A cdc$time-like timeuuid at ``micros`` with the given low 64 bits (variant bits set)."""
    base = min_timeuuid(micros)
    low = (low & 0x3FFFFFFFFFFFFFFF) | 0x8000000000000000
    return uuid.UUID(int=(base.int >> 64 << 64) | low)


def test_min_timeuuid_is_exact_and_sorts_first() -> None:
    us = 1_700_000_000_123_456
    m = min_timeuuid(us)
    assert m.version == 1 and timeuuid_to_micros(m) == us
    assert m.bytes[8:] == b"\x80" * 8
    # Same as the driver's for a whole-ms time (the driver goes through a float).
    assert min_timeuuid(1_700_000_000_123_000) == min_uuid_from_time(1_700_000_000.123)
    for low in (0, 1, 0x7F7F7F7F7F7F7F7F, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000):
        real = _real_timeuuid(us, low)
        assert timeuuid_sort_key(m) <= timeuuid_sort_key(real) < timeuuid_sort_key(min_timeuuid(us + 1))
    assert max_pos(m, _real_timeuuid(us, 5)) == _real_timeuuid(us, 5)


def test_plan_window_respects_confidence_size_and_generation_end() -> None:
    lower = min_timeuuid(1_000_000_000)
    common: dict[str, Any] = {"lower": lower, "confidence_us": 30_000_000, "size_us": 60_000_000}
    # far behind: full size
    assert plan_window(now_us=10_000_000_000, end_us=None, **common) == 1_060_000_000
    # near now: clamped at now - confidence
    assert plan_window(now_us=1_050_000_000, end_us=None, **common) == 1_020_000_000
    # generation end
    assert plan_window(now_us=10_000_000_000, end_us=1_010_000_000, **common) == 1_010_000_000
    # nothing readable yet
    assert plan_window(now_us=1_020_000_000, end_us=None, **common) is None
    assert plan_window(now_us=10_000_000_000, end_us=1_000_000_000, **common) is None


def _row(stream: bytes, t: uuid.UUID, seq: int, eob: bool) -> dict[str, Any]:
    return {"cdc$stream_id": stream, "cdc$time": t, "cdc$batch_seq_no": seq, "cdc$end_of_batch": eob or None}


def test_group_assembler_spans_pages_and_flags_broken_groups() -> None:
    a, b = b"a" * 16, b"b" * 16
    t1, t2, t3 = (min_timeuuid(x) for x in (1, 2, 3))
    asm = GroupAssembler()
    done, broken = asm.feed([_row(a, t1, 0, False), _row(a, t1, 1, True), _row(a, t2, 0, False)])
    assert [(g[0], g[1], len(g[2])) for g in done] == [(a, t1, 2)] and broken == []
    done, broken = asm.feed([_row(a, t2, 1, True), _row(b, t1, 0, False)])
    assert [(g[1], len(g[2])) for g in done] == [(t2, 2)]
    done, broken = asm.feed([_row(b, t3, 0, True)])
    assert [(g[0], g[1]) for g in broken] == [(b, t1)] and [(g[0], g[1]) for g in done] == [(b, t3)]
    asm.feed([_row(a, t3, 0, False)])
    pending = asm.take_pending()
    assert pending is not None and pending[:2] == (a, t3)
    assert asm.take_pending() is None


def test_small_parsers() -> None:
    assert parse_host("h") == ("h", 9042)
    assert parse_host("h:19042") == ("h", 19042)
    assert parse_host("[::1]:9043") == ("::1", 9043)
    assert parse_host("::1") == ("::1", 9042)
    for bad in ("h:0", "h:x", "[::1", ":9042"):
        try:
            parse_host(bad)
        except ValueError as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(bad)
    assert parse_consistency("local_quorum") == 6
    try:
        parse_consistency("MOST")
    except ValueError as exc:
        assert "LOCAL_QUORUM" in str(exc)
    assert start_floor_ms("now", 5) == 5 and start_floor_ms("earliest", 5) == 0
    import datetime

    dt = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    assert start_floor_ms(dt, 0) == 1_704_067_200_000
    assert to_ms(datetime.datetime(2024, 1, 1, 0, 0, 0, 5000)) == 1_704_067_200_005
