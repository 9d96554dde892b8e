"""The optional row cache of the ClickHouse sink (``row_cache_rows``): same rows as without it,
fewer read-backs, and never trusted after a failed insert or ``forget()``."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.errors import BadRows
from cdcd.events import ChangeEvent, Op, RangeBound
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse import ClickHouseSink
from tests.contract.test_clickhouse_sink import Config, ev, rows, schema

COLS = [
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("v", "text", "regular"),
    ("n", "int", "regular"),
    ("l", "list<int>", "regular"),
    ("s", "set<text>", "regular"),
]


class CachedConfig(Config):
    def __init__(self, url: str, rows: int) -> None:
        super().__init__(url)
        self.row_cache_rows = rows


@pytest.fixture
async def sinks(clickhouse_url: str) -> AsyncIterator[tuple[ClickHouseSink, ClickHouseSink]]:
    plain = ClickHouseSink("plain", Config(clickhouse_url))
    cached = ClickHouseSink("cached", CachedConfig(clickhouse_url, 1000))
    for s in (plain, cached):
        await s.connect()
    yield plain, cached
    for s in (plain, cached):
        await s.aclose()


def _workload(seed: int, batches: int) -> list[list[ChangeEvent]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(batches):
        batch = []
        for _ in range(rnd.randint(1, 12)):
            key = {"pk": rnd.randint(0, 3), "ck": rnd.randint(0, 4)}
            r = rnd.random()
            if r < 0.3:
                batch.append(
                    ev(Op.INSERT, key, values={"v": f"i{rnd.randint(0, 9)}", "n": rnd.randint(0, 99)})
                )
            elif r < 0.6:
                batch.append(ev(Op.UPDATE, key, values={"n": rnd.randint(0, 99)}))
            elif r < 0.75:
                batch.append(
                    ev(
                        Op.UPDATE,
                        key,
                        values={"l": {uuid.uuid1(): rnd.randint(0, 9)}, "s": [str(rnd.randint(0, 5))]},
                    )
                )
            elif r < 0.85:
                batch.append(
                    ev(
                        Op.UPDATE,
                        key,
                        deleted_elements={"s": [str(rnd.randint(0, 5))]},
                        deleted=frozenset({"v"}),
                    )
                )
            elif r < 0.93:
                batch.append(ev(Op.ROW_DELETE, key))
            elif r < 0.97:
                lo = rnd.randint(0, 4)
                rng = RangeBound(start=(lo,), start_inclusive=True, end=(lo + 1,), end_inclusive=False)
                batch.append(ev(Op.RANGE_DELETE, {"pk": key["pk"]}, range=rng))
            else:
                batch.append(ev(Op.PARTITION_DELETE, {"pk": key["pk"]}))
        out.append(batch)
    return out  # fmt: skip


def _state(got: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["pk"], r["ck"], r["v"], r["n"], r["l"], r["s"], r["_cdc_version"], r["_cdc_deleted"]) for r in got
    ]


@pytest.mark.parametrize("delete", ["hard", "soft"])
async def test_cached_sink_writes_the_same_rows_with_fewer_reads(
    sinks: tuple[ClickHouseSink, ClickHouseSink], ch: Any, ch_database: str, delete: str
) -> None:
    plain, cached = sinks
    sch = schema(COLS)
    maps = []
    for s, name in ((plain, "p"), (cached, "c")):
        m = TableMapping(source="ks.t", target_schema=ch_database, target_table=name, delete=delete)  # type: ignore[arg-type]
        await s.ensure_table(m, sch)
        maps.append(m)
    for batch in _workload(7 if delete == "hard" else 8, 40):
        a = await plain.write(maps[0], batch)
        b = await cached.write(maps[1], batch)
        assert a == b and a.applied + a.skipped_stale == len(batch)
    assert _state(await rows(ch, ch_database, "p")) == _state(await rows(ch, ch_database, "c"))
    cache = cached._tables[(maps[1].source, maps[1].target)].cache
    assert cache is not None and cache.hits > cache.misses > 0


async def test_a_failed_insert_or_forget_empties_the_cache(
    sinks: tuple[ClickHouseSink, ClickHouseSink], ch: Any, ch_database: str
) -> None:
    _, cached = sinks
    m = TableMapping(source="ks.t", target_schema=ch_database, target_table="t")
    await cached.ensure_table(m, schema(COLS))
    cache = cached._tables[(m.source, m.target)].cache
    assert cache is not None
    await cached.write(m, [ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": "a", "n": 1})])
    assert len(cache) == 1
    # Another writer changes the row; forget() makes the sink read it again.
    await ch.command(
        f"INSERT INTO `{ch_database}`.`t` (pk, ck, v, n, _cdc_version, _cdc_row_marker) "
        "SELECT 1, 1, 'other', 5, _cdc_version + 1, 1 FROM "
        f"`{ch_database}`.`t` FINAL"
    )
    cached.forget(m)
    assert len(cache) == 0
    await cached.write(m, [ev(Op.UPDATE, {"pk": 1, "ck": 1}, values={"n": 2})])
    assert [(r["v"], r["n"]) for r in await rows(ch, ch_database)] == [("other", 2)]
    assert len(cache) == 1
    # An insert the server refuses leaves the cache empty (what is stored is not known in general).
    await ch.command(f"ALTER TABLE `{ch_database}`.`t` ADD CONSTRAINT small CHECK n IS NULL OR n < 1000")
    with pytest.raises(BadRows):
        await cached.write(
            m, [ev(Op.INSERT, {"pk": 2, "ck": 1}, values={"v": "b", "n": 5000, "l": None, "s": None})]
        )
    assert len(cache) == 0
