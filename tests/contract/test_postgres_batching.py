"""The final PostgreSQL state does not depend on how the pipeline cuts the stream into write()
calls, and replays change nothing (R-04): random change sequences on a few keys, applied as one
batch, one event per batch and random splits, then replayed, must all leave identical tables."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cdcd.events import ChangeEvent, Op, RangeBound
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from tests.contract.test_postgres_sink import Config, ev, schema

COLUMNS = [
    ("pk", "int", "partition_key"),
    ("ck", "int", "clustering"),
    ("st", "text", "static"),
    ("a", "text", "regular"),
    ("b", "int", "regular"),
    ("l", "list<int>", "regular"),
    ("s", "set<text>", "regular"),
    ("m", "map<int, text>", "regular"),
    ("u", "ut", "regular"),
]


def random_events(rnd: random.Random, n: int) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    wt = 1_700_000_000_000_000
    list_cells: list[uuid.UUID] = []
    for _ in range(n):
        wt += rnd.randint(1, 1000)
        pk, ck = rnd.randint(1, 2), rnd.randint(1, 3)
        key = {"pk": pk, "ck": ck}
        kind = rnd.choice(
            ["insert", "update", "update", "nulls", "coll", "coll", "delete", "static", "range", "part"]
        )
        if kind in ("insert", "update"):
            vals: dict[str, Any] = {"a": rnd.choice(["x", "y", "z"])} if rnd.random() < 0.7 else {}
            if rnd.random() < 0.5:
                vals["b"] = rnd.randint(0, 9)
            op = Op.INSERT if kind == "insert" else Op.UPDATE
            out.append(ev(op, key, wt=wt, values=vals))
        elif kind == "nulls":
            out.append(
                ev(Op.UPDATE, key, wt=wt, deleted=frozenset(rnd.sample(["a", "b", "l", "s", "m", "u"], 2)))
            )
        elif kind == "coll":
            cell = uuid.UUID(int=(wt << 64) | (1 << 76) | 0x8000000000000000 | rnd.randint(0, 99))
            list_cells.append(cell)
            values = {"l": {cell: rnd.randint(0, 9)}, "s": [rnd.choice("pqr")], "m": {rnd.randint(1, 3): "v"},
                      "u": {"a": rnd.randint(0, 9)}}  # fmt: skip
            removed = {"l": rnd.sample(list_cells, min(1, len(list_cells))), "s": [rnd.choice("pqr")],
                       "m": [rnd.randint(1, 3)], "u": [rnd.choice(["a", "b"])]}  # fmt: skip
            pick = rnd.sample(["l", "s", "m", "u"], 2)
            overwrite = frozenset(c for c in pick if rnd.random() < 0.2)
            out.append(ev(Op.UPDATE, key, wt=wt, values={c: values[c] for c in pick}, deleted=overwrite,
                          deleted_elements={c: removed[c] for c in pick if c not in overwrite and rnd.random() < 0.5}))  # fmt: skip
        elif kind == "delete":
            out.append(ev(Op.ROW_DELETE, key, wt=wt))
        elif kind == "static":
            out.append(ev(Op.UPDATE, {"pk": pk}, wt=wt, static=True, values={"st": rnd.choice(["S", "T"])}))
        elif kind == "range":
            lo, hi = sorted((rnd.randint(1, 3), rnd.randint(1, 3)))
            rng = RangeBound(start=(lo,), start_inclusive=rnd.random() < 0.5, end=(hi,), end_inclusive=True)
            out.append(ev(Op.RANGE_DELETE, {"pk": pk}, wt=wt, range=rng))
        else:
            out.append(ev(Op.PARTITION_DELETE, {"pk": pk}, wt=wt))
    return out


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


async def table_state(conn: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    out = []
    for suffix in ("", "_static"):
        recs = await conn.fetch(f'SELECT * FROM "ks"."{table}{suffix}" ORDER BY 1, 2')
        out += [(suffix, *r.values()) for r in recs]
    return out


@pytest.mark.parametrize("strategy", ["hard", "soft", "tombstone"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_final_state_does_not_depend_on_batching(
    sink: PostgresSink, pg_dsn: str, strategy: str, seed: int
) -> None:
    rnd = random.Random(seed)
    events = random_events(rnd, 60)
    sch = schema(COLUMNS)
    cuts = sorted(rnd.sample(range(1, len(events)), 8))
    splits = {
        "whole": [events],
        "single": [[e] for e in events],
        "random": [events[i:j] for i, j in zip([0, *cuts], [*cuts, len(events)], strict=True)],
    }
    conn = await asyncpg.connect(pg_dsn)
    await PostgresSink._init_connection(conn)
    try:
        states = {}
        for name, batches in splits.items():
            m = TableMapping(source="ks.t", target_schema="ks", target_table=name, delete=strategy)  # type: ignore[arg-type]
            await sink.ensure_table(m, sch)
            for batch in batches:
                await sink.write(m, batch)
            states[name] = await table_state(conn, name)
            # Replaying everything (as after a crash before the checkpoint) changes nothing.
            for batch in splits["random"]:
                await sink.write(m, batch)
            assert await table_state(conn, name) == states[name], name
            if strategy == "tombstone":
                deletes = sum(e.op in (Op.ROW_DELETE, Op.RANGE_DELETE, Op.PARTITION_DELETE) for e in events)
                assert await conn.fetchval(f'SELECT count(*) FROM "ks"."{name}_history"') == deletes
        assert states["single"] == states["whole"]
        assert states["random"] == states["whole"]
        assert states["whole"], "the workload left no rows at all"
    finally:
        await conn.close()


async def test_concurrent_writers_share_one_sink(pg_dsn: str) -> None:
    """Pipelines of different stream groups write the same table at once through one sink (one
    staging table per session, no lock conflicts between different partitions)."""
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    try:
        m = TableMapping(source="ks.t", target_schema="ks", target_table="t", delete="soft")
        await s.ensure_table(m, schema(COLUMNS))

        async def writer(pk: int) -> None:
            for n in range(10):
                batch = [
                    ev(Op.UPDATE, {"pk": pk, "ck": c}, values={"b": n, "l": {uuid.uuid1(): n}})
                    for c in range(20)
                ]
                await s.write(m, batch)
                await s.write(
                    m,
                    [
                        ev(
                            Op.RANGE_DELETE,
                            {"pk": pk},
                            range=RangeBound(start=(15,), start_inclusive=True, end=(), end_inclusive=True),
                        )
                    ],
                )

        await asyncio.gather(*(writer(pk) for pk in range(6)))
        conn = await asyncpg.connect(pg_dsn)
        try:
            live = await conn.fetch('SELECT pk, b, cardinality(l) AS n FROM "ks"."t" WHERE NOT _cdc_deleted')
            assert len(live) == 6 * 15 and {(r["b"], r["n"]) for r in live} == {(9, 10)}  # ten appends each
        finally:
            await conn.close()
    finally:
        await s.aclose()
