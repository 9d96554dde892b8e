"""User-created ClickHouse tables with their own (narrower) types: wire conversions, the definition
the validator reads, missing and bookkeeping columns (cdcd.sinks.clickhouse.convert, R-31)."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cdcd.errors import BadRows, SchemaMismatch
from cdcd.events import Op
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse import ClickHouseSink
from cdcd.stages import Chain
from cdcd.stages.validate import Validator
from tests.contract.builders import schema
from tests.contract.test_clickhouse_sink import Config, ev, rows

COLS = [
    ("pk", "bigint", "partition_key"),
    ("name", "text", "regular"),
    ("amount", "decimal", "regular"),
    ("qty", "bigint", "regular"),
    ("code", "text", "regular"),
    ("state", "text", "regular"),
    ("day", "text", "regular"),
    ("at", "text", "regular"),
]
META = (
    "_cdc_version UInt64, _cdc_is_deleted UInt8, _cdc_deleted UInt8, "
    "_cdc_deleted_at Nullable(DateTime64(6, 'UTC')), _cdc_row_marker UInt8, _cdc_empty Array(String)"
)


@pytest.fixture
async def sink(clickhouse_url: str) -> AsyncIterator[ClickHouseSink]:
    s = ClickHouseSink("ch", Config(clickhouse_url))
    await s.connect()
    yield s
    await s.aclose()


def user_ddl(db: str, meta: bool = True) -> str:
    return (
        f"CREATE TABLE `{db}`.t (pk UInt32, name LowCardinality(String), amount Decimal(9, 2), "
        "qty Nullable(Int16), code Nullable(FixedString(3)), state Enum8('new' = 1, 'paid' = 2), "
        "day Nullable(Date), at Nullable(DateTime64(3, 'UTC'))"
        + (f", {META}" if meta else "")
        + ") ENGINE = ReplacingMergeTree(_cdc_version"
        + (", _cdc_is_deleted" if meta else "")
        + ") ORDER BY pk"
    )


def mapping(db: str, **kw: Any) -> TableMapping:
    return TableMapping(source="ks.t", target_schema=db, target_table="t", create=False, **kw)


async def test_bookkeeping_columns_are_refused_with_the_statements(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    await ch.command(
        f"CREATE TABLE `{ch_database}`.t (pk UInt32, name String, amount Decimal(9, 2), qty Nullable(Int16), "
        "code Nullable(FixedString(3)), state Enum8('new' = 1, 'paid' = 2), day Nullable(Date32), "
        "at Nullable(DateTime64(3, 'UTC')), _cdc_version UInt64) ENGINE = ReplacingMergeTree(_cdc_version) ORDER BY pk"
    )
    with pytest.raises(SchemaMismatch) as err:
        await sink.ensure_table(mapping(ch_database), schema(COLS))
    assert f"ALTER TABLE `{ch_database}`.`t` ADD COLUMN IF NOT EXISTS `_cdc_is_deleted` UInt8" in str(
        err.value
    )
    with pytest.raises(SchemaMismatch, match=r"source column ks\.t\.extra has no column"):
        await sink.ensure_table(
            mapping(ch_database, bookkeeping=True), schema([*COLS, ("extra", "int", "regular")])
        )


async def test_narrower_types_round_trip_and_refusals(
    sink: ClickHouseSink, ch: Any, ch_database: str
) -> None:
    await ch.command(user_ddl(ch_database))
    m = mapping(ch_database, bookkeeping=True)  # (may create cdcd's offsets table beside it)
    sch = schema(COLS)
    await sink.ensure_table(m, sch)
    good = ev(Op.INSERT, {"pk": 1}, values={
        "name": "anna", "amount": decimal.Decimal("12.5"), "qty": 7, "code": "abc", "state": "paid",
        "day": "2026-01-31", "at": "2026-01-31T12:00:00.250Z",
    })  # fmt: skip
    await sink.write(m, [good])
    # a partial update reads the row back (through the conversions) and writes it again
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, values={"qty": 8})])
    (row,) = await rows(ch, ch_database)
    assert (row["name"], row["amount"], row["qty"], row["code"], row["state"], row["day"]) == (
        "anna", decimal.Decimal("12.50"), 8, b"abc", "paid", dt.date(2026, 1, 31),
    )  # fmt: skip
    assert row["at"].replace(tzinfo=dt.UTC) == dt.datetime(2026, 1, 31, 12, 0, 0, 250000, tzinfo=dt.UTC)

    target = await sink.target_definition(m)
    v = Validator(target, columns=[c.name for c in sch.columns])
    bad = [
        ev(Op.UPDATE, {"pk": 2}, values={"name": "x", "amount": decimal.Decimal("0.001")}),
        ev(Op.UPDATE, {"pk": 3}, values={"name": "x", "code": "abcd"}),
        ev(Op.UPDATE, {"pk": 4}, values={"name": "x", "state": "lost"}),
        ev(Op.UPDATE, {"pk": 5}, values={"name": "x", "qty": 70000}),
        ev(Op.UPDATE, {"pk": -1}, values={"name": "x"}),
        ev(Op.UPDATE, {"pk": 6}, values={"name": None}),
        ev(Op.UPDATE, {"pk": 7}, values={"day": "1850-01-01"}),
    ]
    ok = ev(Op.INSERT, {"pk": 8}, values={"name": "ok", "amount": decimal.Decimal("1"), "state": "new"})
    passed, rejected = Chain([v]).run([*bad, ok])
    assert list(passed) == [ok]
    assert [r.rule for r in rejected] == [  # type: ignore[attr-defined]
        "scale", "max_length", "allowed", "range", "range", "not_null", "range",
    ]  # fmt: skip
    # Past the validator, ClickHouse (or the conversion) refuses them itself: deterministic BadRows.
    with pytest.raises(BadRows) as err:
        await sink.write(m, [ok, bad[2]])
    assert err.value.deterministic and set(err.value.errors) == {1}
    await sink.write(m, [ok])
    assert [r["pk"] for r in await rows(ch, ch_database)] == [1, 8]
