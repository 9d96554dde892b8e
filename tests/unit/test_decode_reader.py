"""GroupReader window loop over an in-memory fake of the session (pure unit tests; the real thing
is covered by tests/integration/test_reader.py against the emulator)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.errors import SourceUnavailable
from cdcd.events import EventBatch, Position, timeuuid_sort_key
from cdcd.schema import CdcOptions, Column, CqlType, TableSchema
from cdcd.scylla.decode import UndecodableGroup, log_column_names
from cdcd.scylla.generations import StreamGroup
from cdcd.scylla.reader import GroupReader, ReaderConfig
from cdcd.scylla.windows import min_timeuuid

SCHEMA = TableSchema(
    "ks",
    "t",
    (Column("pk", CqlType("int"), "partition_key"), Column("v", CqlType("int"), "regular")),
    cdc=CdcOptions(enabled=True),
)
A, B = bytes(range(16)), bytes(range(1, 17))
CFG = ReaderConfig(
    confidence_window_s=0.0, window_s=1.0, max_window_s=4.0, poll_interval_s=0.01, generation_poll_s=0.01,
    fetch_size=3, retry_initial_s=0.01, retry_max_s=0.02,
)  # fmt: skip


def t_at(us: int, low: int = 0x1234) -> uuid.UUID:
    base = min_timeuuid(us)
    return uuid.UUID(int=(base.int >> 64 << 64) | 0x8000000000000000 | low)


class FakeSession:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.fail_pages = 0
        self.queries = 0

    async def prepare(self, query: str) -> str:
        return query

    def log_columns(self, keyspace: str, table: str) -> tuple[str, ...]:
        return tuple(sorted(log_column_names(SCHEMA)))

    async def table_schema(self, keyspace: str, table: str, *, refresh: bool = False) -> TableSchema:
        return SCHEMA

    async def pages(self, stmt: Any, params: list[Any], **kw: Any) -> AsyncIterator[list[dict[str, Any]]]:
        self.queries += 1
        streams, lower, upper = params
        sel = [
            r
            for r in self.rows
            if r["cdc$stream_id"] in streams
            and timeuuid_sort_key(lower) < timeuuid_sort_key(r["cdc$time"]) <= timeuuid_sort_key(upper)
        ]
        sel.sort(key=lambda r: (r["cdc$stream_id"], timeuuid_sort_key(r["cdc$time"]), r["cdc$batch_seq_no"]))
        for i in range(0, len(sel), kw["fetch_size"]):
            if self.fail_pages:
                self.fail_pages -= 1
                raise SourceUnavailable("injected")
            yield [dict(r) for r in sel[i : i + kw["fetch_size"]]]


class FakeDiscovery:
    def __init__(self, end: int | None) -> None:
        self.end = end

    async def next_generation(self, table: str, after: int) -> int | None:
        return self.end


def log_row(  # noqa: PLR0917
    stream: bytes, t: uuid.UUID, pk: int, seq: int = 0, eob: bool = True, op: int = 2
) -> dict[str, Any]:
    return {
        "cdc$stream_id": stream, "cdc$time": t, "cdc$batch_seq_no": seq, "cdc$operation": op,
        "cdc$ttl": None, "cdc$end_of_batch": eob or None, "pk": pk, "v": pk, "cdc$deleted_v": None,
    }  # fmt: skip


def setup(
    rows: list[dict[str, Any]], *, gen_ms: int, end_ms: int | None, **kw: Any
) -> tuple[FakeSession, GroupReader]:
    s = FakeSession(rows)
    group = StreamGroup(table="ks.t", generation=gen_ms, end=None, streams=(A, B), key=f"{gen_ms}:0")
    reader = GroupReader(s, FakeDiscovery(end_ms), group, config=CFG, **kw)  # type: ignore[arg-type]
    return s, reader


async def drain(reader: GroupReader, start: dict[bytes, Position] | None = None) -> list[EventBatch]:
    return [b async for b in reader.read(start or {})]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_closed_generation_is_read_once_and_the_iterator_ends() -> None:
    gen = now_ms() - 20_000
    end = gen + 10_000
    rows = [log_row(A if i % 2 else B, t_at((gen + 500 * i) * 1000), i) for i in range(20)]
    rows.append(log_row(A, t_at(end * 1000 + 5), 99))  # belongs to the next generation's time
    s, reader = setup(rows, gen_ms=gen, end_ms=end)
    batches = await drain(reader)
    pks = [e.key["pk"] for b in batches for e in b.events]
    assert sorted(pks) == list(range(20))
    final = batches[-1]
    assert final.events == [] and set(final.upto) == {A, B}
    assert all(p.time == min_timeuuid(end * 1000) and p.generation == gen for p in final.upto.values())
    # catch-up windows grow: 10 s of backlog in 1 s, 2 s, 4 s, 3 s windows
    assert s.queries == 4


async def test_start_positions_skip_delivered_groups_and_equal_timestamps_are_kept() -> None:
    gen = now_ms() - 20_000
    t1 = t_at((gen + 1000) * 1000, low=1)
    t2 = t_at((gen + 1000) * 1000, low=2)  # same µs, later in CQL order
    rows = [log_row(A, t1, 1), log_row(A, t2, 2), log_row(B, t1, 3)]
    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 5000)
    start = {A: Position(generation=gen, stream_id=A, time=t1)}
    pks = sorted(e.key["pk"] for b in await drain(reader, start) for e in b.events)
    assert pks == [2, 3]


async def test_failures_are_retried_without_duplicates() -> None:
    gen = now_ms() - 10_000
    rows = [log_row(A, t_at((gen + 100 * i) * 1000), i) for i in range(12)]
    s, reader = setup(rows, gen_ms=gen, end_ms=gen + 5000)
    s.fail_pages = 3
    pks = [e.key["pk"] for b in await drain(reader) for e in b.events]
    assert pks == list(range(12))


async def test_groups_spanning_pages_and_batch_upto() -> None:
    gen = now_ms() - 10_000
    t = t_at((gen + 100) * 1000)
    rows = [log_row(A, t, 1, seq=i, eob=i == 4, op=1) for i in range(5)]  # 5 rows, pages of 3
    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 500)
    batches = await drain(reader)
    [batch] = [b for b in batches if b.events]
    assert [e.batch_seq for e in batch.events] == [0, 1, 2, 3, 4]
    assert batch.upto == {A: Position(generation=gen, stream_id=A, time=t)}


async def test_undecodable_group_goes_to_on_invalid_or_stops_the_reader() -> None:
    gen = now_ms() - 10_000
    rows = [log_row(A, t_at((gen + 100) * 1000), 1, op=42), log_row(A, t_at((gen + 200) * 1000), 2)]
    routed: list[UndecodableGroup] = []

    async def on_invalid(err: UndecodableGroup) -> None:
        routed.append(err)

    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 500, on_invalid=on_invalid)
    pks = [e.key["pk"] for b in await drain(reader) for e in b.events]
    assert pks == [2] and len(routed) == 1 and "unknown cdc$operation 42" in str(routed[0])
    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 500)
    with pytest.raises(UndecodableGroup, match="42"):
        await drain(reader)


async def test_group_without_end_of_batch_is_held_then_routed() -> None:
    gen = now_ms() - 10_000
    t = t_at((gen + 100) * 1000)
    # B's rows come last in the query result: its incomplete group is still open at the window end.
    rows = [log_row(B, t, 1, eob=False), log_row(A, t_at((gen + 150) * 1000), 2)]
    routed: list[UndecodableGroup] = []

    async def on_invalid(err: UndecodableGroup) -> None:
        routed.append(err)

    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 500, on_invalid=on_invalid)
    batches = await drain(reader)
    assert [e.key["pk"] for b in batches for e in b.events] == [2]
    assert len(routed) == 1 and "end_of_batch" in routed[0].reason
    # Stream B was held behind the incomplete group until it was routed.
    first_end = next(b for b in batches if not b.events)
    assert B not in first_end.upto and A in first_end.upto


async def test_start_is_clamped_to_ttl_and_floor() -> None:
    gen = now_ms() - 100_000
    rows = [log_row(A, t_at((gen + 1000) * 1000), 1), log_row(A, t_at((gen + 60_000) * 1000), 2)]
    _, reader = setup(rows, gen_ms=gen, end_ms=gen + 90_000, start_floor_ms=gen + 30_000)
    assert [e.key["pk"] for b in await drain(reader) for e in b.events] == [2]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_window_s"):
        ReaderConfig(window_s=10, max_window_s=5)
    with pytest.raises(ValueError, match="consistency"):
        ReaderConfig(consistency="MOST")
