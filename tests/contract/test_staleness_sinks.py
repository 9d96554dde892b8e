"""The version guards of every destination type (R-22), against real PostgreSQL, TimescaleDB and
ClickHouse: per event, what was applied, what was a replay (``duplicate``) and what was older than
the destination row (``stale``, with the row's write time), for the three strategies."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import clickhouse_connect
import pytest

from cdcd.config import Duration, HypertableConfig, Secret, TimescaleDestination
from cdcd.errors import SchemaMismatch
from cdcd.events import ChangeEvent, Op
from cdcd.schema import TableSchema
from cdcd.sinks import Sink, TableMapping, WriteOutcome, create_sink
from cdcd.sinks.postgres import PostgresSink
from tests.contract import builders

T = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
COLS = [
    ("pk", "int", "partition_key"),
    ("ts", "timestamp", "clustering"),
    ("v", "text", "regular"),
    ("rev", "bigint", "regular"),
]
_low = itertools.count(1)


def schema() -> TableSchema:
    return builders.schema(COLS, name="s")


def ev(op: Op, pk: int, wt: int, **values: Any) -> ChangeEvent:
    return builders.ev(op, {"pk": pk, "ts": T}, wt=wt, low=next(_low), table="ks.s", values=values)


class Dest:
    """One destination under test: its sink, where the table lives, and how to read it back."""

    def __init__(self, kind: str, sink: Sink, schema_name: str, read: Any) -> None:
        self.kind = kind
        self.sink = sink
        self.schema_name = schema_name
        self._read = read

    async def table(self, staleness: str = "timestamp", version_column: str | None = None) -> TableMapping:
        m = TableMapping(
            source="ks.s",
            target_schema=self.schema_name,
            target_table="s",
            staleness=staleness,  # type: ignore[arg-type]
            version_column=version_column,
        )
        await self.sink.ensure_table(m, schema())
        return m

    async def rows(self) -> dict[int, tuple[Any, Any]]:
        """pk -> (v, rev) as the destination shows it."""
        return dict(await self._read())


class _PgConfig:
    def __init__(self, dsn: str) -> None:
        self.kind = "postgres"
        self.dsn = dsn
        self.pool_size = 2


class _ChConfig:
    def __init__(self, url: str) -> None:
        self.kind = "clickhouse"
        self.url = url
        self.username = "default"
        self.password = None


@pytest.fixture(params=["postgres", "timescaledb", "clickhouse"])
async def dest(request: pytest.FixtureRequest) -> AsyncIterator[Dest]:
    kind = request.param
    if kind == "clickhouse":
        url = request.getfixturevalue("clickhouse_url")
        db = request.getfixturevalue("ch_database")
        u = urlsplit(url)
        ch = await clickhouse_connect.get_async_client(
            host=u.hostname, port=u.port, autogenerate_session_id=False
        )
        sink = create_sink("ch", _ChConfig(url))

        async def read_ch() -> list[tuple[int, tuple[Any, Any]]]:
            res = await ch.query(f"SELECT pk, v, rev FROM `{db}`.`s` FINAL WHERE _cdc_is_deleted = 0")
            return [(r[0], (r[1], r[2])) for r in res.result_rows]

        d = Dest(kind, sink, db, read_ch)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        if kind == "timescaledb":
            assert request.getfixturevalue("timescaledb_available"), "timescaledb is not installed"
            cfg: Any = TimescaleDestination(
                dsn=Secret(dsn),
                pool_size=2,
                hypertables={"ks.s": HypertableConfig(time_column="ts", chunk_interval=Duration(86400.0))},
            )
        else:
            cfg = _PgConfig(dsn)
        sink = create_sink("pg", cfg)

        async def read_pg() -> list[tuple[int, tuple[Any, Any]]]:
            c = await asyncpg.connect(dsn)
            try:
                await PostgresSink._init_connection(c)
                recs = await c.fetch('SELECT pk, v, rev FROM "ks"."s" WHERE NOT _cdc_deleted')
            finally:
                await c.close()
            return [(r["pk"], (r["v"], r["rev"])) for r in recs]

        d = Dest(kind, sink, "ks", read_pg)
    await sink.connect()
    yield d
    await sink.aclose()
    if kind == "clickhouse":
        await ch.close()


def verdicts(out: WriteOutcome) -> list[tuple[int, str, int | None]]:
    return [(x.index, x.reason, x.row_write_time_us) for x in out.skipped]


async def test_replays_are_duplicates_and_a_stale_resubmission_names_the_rows_write_time(dest: Dest) -> None:
    m = await dest.table()
    batch = [
        ev(Op.INSERT, 1, 1000, v="a", rev=1),
        ev(Op.UPDATE, 1, 2000, v="b"),
        ev(Op.INSERT, 2, 1500, v="c", rev=1),
    ]
    first = await dest.sink.write(m, batch)
    assert (first.applied, first.skipped) == (3, ())
    again = await dest.sink.write(m, batch)  # the whole batch replayed (a crash before the checkpoint)
    assert (again.applied, again.skipped_stale) == (0, 3)
    assert {x.reason for x in again.skipped} == {"duplicate"}
    assert (again.stale, again.duplicates) == (0, 3)
    # A resubmitted old event: older than the row, so stale, with the row's current write time.
    out = await dest.sink.write(m, [ev(Op.INSERT, 3, 500, v="x", rev=1), batch[0]])
    assert out.applied == 1
    assert verdicts(out) == [(1, "stale", 2000)]
    assert await dest.rows() == {1: ("b", 1), 2: ("c", 1), 3: ("x", 1)}


async def test_the_timestamp_strategy_ignores_the_version_column(dest: Dest) -> None:
    m = await dest.table()
    await dest.sink.write(m, [ev(Op.INSERT, 1, 1000, v="high", rev=5)])
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 3000, v="low", rev=3)])
    assert (out.applied, out.skipped) == (1, ())
    assert await dest.rows() == {1: ("low", 3)}


async def test_the_version_strategy_keeps_a_higher_version_against_a_later_write_time(dest: Dest) -> None:
    m = await dest.table("version", "rev")
    assert (await dest.sink.write(m, [ev(Op.INSERT, 1, 1000, v="high", rev=5)])).applied == 1
    # A lower version written later is stale: the audit gets the row's write time and version.
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 3000, v="low", rev=3)])
    assert out.applied == 0
    assert [(x.reason, x.row_write_time_us, x.row_version) for x in out.skipped] == [("stale", 1000, 5)]
    assert await dest.rows() == {1: ("high", 5)}
    # A higher version applies even with an earlier write time.
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 800, v="higher", rev=7)])
    assert (out.applied, out.skipped) == (1, ())
    assert await dest.rows() == {1: ("higher", 7)}
    # A partial update without the version column keeps the row's version and applies.
    out = await dest.sink.write(m, [ev(Op.UPDATE, 1, 4000, v="edited")])
    assert (out.applied, out.skipped) == (1, ())
    assert await dest.rows() == {1: ("edited", 7)}
    # Within one batch too: the lower version after a higher one is stale.
    batch = [ev(Op.INSERT, 2, 5000, v="x", rev=10), ev(Op.INSERT, 2, 6000, v="y", rev=9)]
    out = await dest.sink.write(m, batch)
    assert out.applied == 1
    assert [(x.index, x.reason, x.row_version) for x in out.skipped] == [(1, "stale", 10)]
    assert (await dest.rows())[2] == ("x", 10)
    # The replay of that batch: duplicates (the first) and stale again (the second).
    out = await dest.sink.write(m, batch)
    assert out.applied == 0
    assert [(x.index, x.reason) for x in out.skipped] == [(0, "duplicate"), (1, "stale")]


async def test_the_hybrid_strategy_breaks_version_ties_by_write_time(dest: Dest) -> None:
    m = await dest.table("hybrid", "rev")
    await dest.sink.write(m, [ev(Op.INSERT, 1, 2000, v="a", rev=5)])
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 1000, v="older", rev=5)])  # tie, earlier: stale
    assert [(x.reason, x.row_write_time_us) for x in out.skipped] == [("stale", 2000)]
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 9000, v="lower", rev=4)])  # lower version: stale
    assert [(x.reason, x.row_write_time_us) for x in out.skipped] == [("stale", 2000)]
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 3000, v="b", rev=5)])  # tie, later: applies
    assert (out.applied, out.skipped) == (1, ())
    out = await dest.sink.write(m, [ev(Op.INSERT, 1, 100, v="c", rev=6)])  # higher version: applies
    assert (out.applied, out.skipped) == (1, ())
    assert await dest.rows() == {1: ("c", 6)}


async def test_a_version_column_that_cannot_version_rows_is_refused(dest: Dest) -> None:
    with pytest.raises(SchemaMismatch, match=r"tables\.ks\.s\.version_column: ks\.s has no column 'nope'"):
        await dest.table("version", "nope")
    with pytest.raises(SchemaMismatch, match="clustering column"):
        await dest.table("hybrid", "ts")


async def test_a_delete_older_than_the_row_is_stale(dest: Dest) -> None:
    m = await dest.table()
    await dest.sink.write(m, [ev(Op.INSERT, 1, 2000, v="a", rev=1)])
    old = builders.ev(Op.ROW_DELETE, {"pk": 1, "ts": T}, wt=1000, low=next(_low), table="ks.s")
    out = await dest.sink.write(m, [old])
    assert (out.applied, verdicts(out)) == (0, [(0, "stale", 2000)])
    assert await dest.rows() == {1: ("a", 1)}
    newer = builders.ev(Op.ROW_DELETE, {"pk": 1, "ts": T}, wt=3000, low=next(_low), table="ks.s")
    out = await dest.sink.write(m, [newer])
    assert (out.applied, out.skipped) == (1, ())
    assert await dest.rows() == {}
