"""DeadLetterStore against a real Redis: lossless events, merge on repeat, listing, replay."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from cdcd.errors import ConfigError
from cdcd.events import ChangeEvent, CqlDuration, Op, Position, RangeBound
from cdcd.state import DeadLetter, DeadLetterStore, entry_id

GEN = 1_700_000_000_000
STREAM = b"\x07" * 16


def event(n: int, table: str = "ks.t1", **values: object) -> ChangeEvent:
    return ChangeEvent(
        table=table,
        pos=Position(generation=GEN, stream_id=STREAM, time=uuid.UUID(int=(n << 64) | 0x1000 << 48)),
        batch_seq=0,
        op=Op.UPDATE,
        write_time_us=1_700_000_000_000_000 + n,
        key={"id": n},
        values=dict(values),
    )


def rich_event() -> ChangeEvent:
    """Every canonical value form of cdcd/events.py, including ones msgpack alone would lose."""
    return ChangeEvent(
        table="ks.rich",
        pos=Position(generation=GEN, stream_id=STREAM, time=uuid.uuid1()),
        batch_seq=3,
        op=Op.UPDATE,
        write_time_us=1_700_000_000_123_456,
        key={"id": uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), "d": decimal.Decimal("10.500")},
        static=False,
        values={
            "vi": 2**100,
            "neg": -(2**90),
            "ts": datetime.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=datetime.UTC),
            "dt": datetime.date(1, 1, 1),
            "tm": 86_399_999_999_999,
            "du": CqlDuration(1, -2, 3),
            "ip": "::1",
            "bl": b"\x00\xff",
            "fl": float("inf"),
            "tup": (1, "x", None, (2.5, b"y")),
            "frozen_map": {(1, 2): {"a": [uuid.UUID(int=1)]}},
            "list_delta": {uuid.UUID(int=9): "v"},
            "udt": {"f1": None, "f2": decimal.Decimal("-0")},
            "st": ["a", "b"],
        },
        deleted=frozenset({"gone"}),
        deleted_elements={"m": [datetime.date(2020, 5, 1), (1, "t")]},
        ttl=3600,
        range=RangeBound(
            start=(datetime.date(2020, 1, 1),), start_inclusive=True, end=(), end_inclusive=False
        ),
        preimage={"id": uuid.UUID(int=2), "n": None},
        postimage=None,
    )


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[DeadLetterStore]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield DeadLetterStore(client, prefix=redis_prefix)
    finally:
        await client.aclose()


def dead(
    ev: ChangeEvent, *, attempts: int = 10, at: float = 100.0, reason: str = "22P02 bad int"
) -> DeadLetter:
    return DeadLetterStore.make(
        "dead", "pg", ev, reason=reason, stage="sending", attempts=attempts, first_failed_at=at
    )


async def test_entry_keeps_the_original_event_losslessly(store: DeadLetterStore) -> None:
    ev = rich_event()
    await store.add([dead(ev)])
    got = await store.get("dead", "pg", entry_id(ev))
    assert got is not None
    assert got.event == ev
    assert got.event.values["tup"] == (1, "x", None, (2.5, b"y"))
    assert type(got.event.key["d"]) is decimal.Decimal and str(got.event.key["d"]) == "10.500"
    assert (got.destination, got.table, got.reason, got.stage, got.attempts) == (
        "pg", "ks.rich", "22P02 bad int", "sending", 10,
    )  # fmt: skip


async def test_list_count_delete_are_per_kind_and_destination(store: DeadLetterStore) -> None:
    await store.add([dead(event(i), at=100.0 + (5 - i)) for i in range(5)])
    await store.add([DeadLetterStore.make("validation", "pg", event(9), reason="too long", stage="validate",
                                          attempts=0, first_failed_at=1.0)])  # fmt: skip
    assert await store.count("dead", "pg") == 5
    assert await store.count("validation", "pg") == 1
    assert await store.count("dead", "ch") == 0
    listed = await store.list("dead", "pg")
    assert [e.event.key["id"] for e in listed] == [4, 3, 2, 1, 0]  # oldest first failure first
    assert [e.event.key["id"] for e in await store.list("dead", "pg", limit=2)] == [4, 3]
    assert await store.delete("dead", "pg", [entry_id(event(4)), entry_id(event(3)), "nope"]) == 2
    assert await store.count("dead", "pg") == 3
    assert await store.destinations("dead") == ["pg"]


async def test_same_event_again_merges_instead_of_duplicating(store: DeadLetterStore) -> None:
    await store.add([dead(event(1), attempts=10, at=100.0)])
    await store.add([dead(event(1), attempts=10, at=250.0, reason="second")])
    assert await store.count("dead", "pg") == 1
    got = await store.get("dead", "pg", entry_id(event(1)))
    assert got is not None
    assert (got.attempts, got.first_failed_at, got.last_failed_at, got.reason) == (20, 100.0, 250.0, "second")


async def test_list_filters_by_table(store: DeadLetterStore) -> None:
    await store.add([dead(event(i, table="ks.a" if i % 2 else "ks.b"), at=float(i)) for i in range(6)])
    assert [e.event.key["id"] for e in await store.list("dead", "pg", table="ks.a")] == [1, 3, 5]


async def test_replay_deletes_only_what_the_handler_accepted(store: DeadLetterStore) -> None:
    await store.add([dead(event(i), at=float(i)) for i in range(5)])
    seen: list[int] = []

    async def handler(batch: Sequence[DeadLetter]) -> None:
        if any(e.event.key["id"] == 4 for e in batch):
            raise RuntimeError("destination still refuses row 4")
        seen.extend(e.event.key["id"] for e in batch)

    with pytest.raises(RuntimeError, match="row 4"):
        await store.replay("dead", "pg", handler, batch=2)
    assert seen == [0, 1, 2, 3]
    assert [e.event.key["id"] for e in await store.list("dead", "pg")] == [4]
    assert await store.replay("dead", "pg", handler, ids=["missing"]) == 0


async def test_replay_selected_ids(store: DeadLetterStore) -> None:
    await store.add([dead(event(i), at=float(i)) for i in range(3)])
    got: list[ChangeEvent] = []

    async def handler(batch: Sequence[DeadLetter]) -> None:
        got.extend(e.event for e in batch)

    assert await store.replay("dead", "pg", handler, ids=[entry_id(event(2))]) == 1
    assert got == [event(2)]
    assert await store.count("dead", "pg") == 2


async def test_update_replaces_an_existing_entry_only(store: DeadLetterStore) -> None:
    entry = DeadLetterStore.make("validation", "pg", event(1, name="x" * 300), reason="too long",
                                 stage="validate", attempts=0, first_failed_at=5.0)  # fmt: skip
    await store.add([entry])
    fixed = DeadLetterStore.make("validation", "pg", event(1, name="x"), reason="too long", stage="validate",
                                 attempts=0, first_failed_at=5.0)  # fmt: skip
    await store.update(fixed)
    got = await store.get("validation", "pg", entry.id)
    assert got is not None and got.event.values == {"name": "x"}
    with pytest.raises(KeyError):
        await store.update(DeadLetterStore.make("validation", "pg", event(2), reason="r", stage="validate",
                                                attempts=0, first_failed_at=1.0))  # fmt: skip
    assert await store.count("validation", "pg") == 1


async def test_unknown_kind_is_refused(store: DeadLetterStore) -> None:
    with pytest.raises(ConfigError, match="unknown dead-letter queue 'trash'"):
        await store.count("trash", "pg")  # type: ignore[arg-type]


async def test_values_of_unknown_types_are_refused_by_name(store: DeadLetterStore) -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="Opaque"):
        await store.add([dead(event(1, v=Opaque()))])
    assert await store.count("dead", "pg") == 0
