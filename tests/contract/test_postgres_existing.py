"""User-created PostgreSQL tables with their own (narrower) types: conversions, the definition the
validator reads, missing columns and bookkeeping columns (cdcd.sinks.postgres.convert, R-31)."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cdcd.errors import BadRows, SchemaMismatch, UnmanagedTable
from cdcd.events import Op
from cdcd.sinks import TableMapping
from cdcd.sinks.postgres import PostgresSink
from cdcd.stages import Chain
from cdcd.stages.validate import Validator
from tests.contract.builders import ev, schema
from tests.contract.test_postgres_sink import Config, rows

COLS = [
    ("pk", "bigint", "partition_key"),
    ("name", "text", "regular"),
    ("amount", "decimal", "regular"),
    ("qty", "bigint", "regular"),
    ("doc", "text", "regular"),
    ("at", "text", "regular"),
    ("ref", "text", "regular"),
    ("ip", "text", "regular"),
    ("ratio", "double", "regular"),
]
USER_DDL = """
CREATE SCHEMA ks;
CREATE TABLE ks.t (
    pk integer PRIMARY KEY,
    name varchar(8) NOT NULL,
    amount numeric(8,2),
    qty smallint CHECK (qty >= 0),
    doc jsonb,
    at timestamptz,
    ref uuid,
    ip inet,
    ratio real,
    extra text DEFAULT 'kept'
)
"""
BOOK = ["_cdc_write_time", "_cdc_batch_seq", "_cdc_row_marker", "_cdc_deleted", "_cdc_deleted_at"]


@pytest.fixture
async def sink(pg_dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink("pg", Config(pg_dsn))
    await s.connect()
    yield s
    await s.aclose()


def mapping(**kw: object) -> TableMapping:
    kw.setdefault("create", False)
    return TableMapping(source="ks.t", target_schema="ks", target_table="t", **kw)  # type: ignore[arg-type]


async def test_without_bookkeeping_permission_the_exact_alter_statements_are_given(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    await conn.execute(USER_DDL)
    with pytest.raises(SchemaMismatch) as err:
        await sink.ensure_table(mapping(), schema(COLS))
    text = str(err.value)
    assert "add_bookkeeping_columns = false" in text
    assert 'ALTER TABLE "ks"."t" ADD COLUMN _cdc_write_time bigint NOT NULL DEFAULT 0;' in text
    for col in BOOK:
        assert f"ADD COLUMN {col} " in text
    for stmt in text.split("run: ", 1)[1].split(";"):
        if stmt.strip():
            await conn.execute(stmt)  # the statements as given work
    with pytest.raises(SchemaMismatch) as err:  # cdcd's own offsets table, likewise not created
        await sink.ensure_table(mapping(), schema(COLS))
    await conn.execute(str(err.value).split("create it with: ", 1)[1])
    await sink.ensure_table(mapping(), schema(COLS))


async def test_a_source_column_without_target_column_is_named(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    await conn.execute(USER_DDL)
    cols = [*COLS, ("gone", "text", "regular")]
    with pytest.raises(SchemaMismatch, match=r"source column ks\.t\.gone has no column in ks\.t"):
        await sink.ensure_table(mapping(bookkeeping=True), schema(cols))
    # create_tables on: still not added, the table is not cdcd's
    with pytest.raises(
        UnmanagedTable, match=r"ks\.t\.gone has no column in ks\.t, a table cdcd did not create"
    ):
        await sink.ensure_table(mapping(bookkeeping=True, create=True), schema(cols))
    await conn.execute("ALTER TABLE ks.t ALTER COLUMN ratio TYPE boolean USING false")
    with pytest.raises(SchemaMismatch, match=r"ks\.t\.ratio is boolean, expected double precision"):
        await sink.ensure_table(mapping(bookkeeping=True), schema(COLS))


async def test_narrower_types_are_converted_exactly_and_refusals_are_found(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    await conn.execute(USER_DDL)
    m = mapping(bookkeeping=True)
    sch = schema(COLS)
    await sink.ensure_table(m, sch)
    assert set(BOOK) <= {r["column_name"] for r in await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 't'")}  # fmt: skip
    ref = uuid.uuid4()
    good = ev(Op.INSERT, {"pk": 1}, values={
        "name": "anna", "amount": decimal.Decimal("12.50"), "qty": 7, "doc": '{"a": [1, 2.5]}',
        "at": "2026-01-31T12:00:00Z", "ref": str(ref), "ip": "10.1.2.3", "ratio": 0.5,
    })  # fmt: skip
    await sink.write(m, [good])
    (row,) = await rows(conn)
    assert (row["name"], row["amount"], row["qty"], row["doc"], row["ref"], row["ip"], row["ratio"], row["extra"]) == (
        "anna", decimal.Decimal("12.50"), 7, {"a": [1, decimal.Decimal("2.5")]}, ref,
        ipaddress.ip_address("10.1.2.3"), 0.5, "kept",
    )  # fmt: skip
    assert row["at"] == dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)
    # A partial update of the existing row passes the NOT NULL name it does not carry; one that
    # would create a row without a name is refused by PostgreSQL (23502), nothing written.
    await sink.write(m, [ev(Op.UPDATE, {"pk": 1}, values={"qty": 8})])
    assert [(r["name"], r["qty"]) for r in await rows(conn)] == [("anna", 8)]
    with pytest.raises(BadRows) as err:
        await sink.write(
            m, [ev(Op.UPDATE, {"pk": 1}, values={"qty": 9}), ev(Op.UPDATE, {"pk": 99}, values={"qty": 1})]
        )
    assert set(err.value.errors) == {1} and "not-null" in err.value.errors[1]

    # What the validator reads is the real definition; it refuses what PostgreSQL would.
    target = await sink.target_definition(m)
    v = Validator(target, columns=[c.name for c in sch.columns])
    bad = [
        ev(Op.UPDATE, {"pk": 2}, values={"name": "much too long"}),
        ev(Op.UPDATE, {"pk": 3}, values={"name": "x", "qty": -1}),
        ev(Op.UPDATE, {"pk": 4}, values={"name": "x", "amount": decimal.Decimal("1.001")}),
        ev(Op.UPDATE, {"pk": 5}, values={"name": "x", "doc": "{nope"}),
        ev(Op.UPDATE, {"pk": 2**40}, values={"name": "x"}),
        ev(Op.UPDATE, {"pk": 6}, values={"name": None}),
    ]
    ok = ev(Op.UPDATE, {"pk": 7}, values={"name": "fine", "qty": 3})
    passed, rejected = Chain([v]).run([*bad, ok])
    assert list(passed) == [ok]
    assert [r.rule for r in rejected] == [  # type: ignore[attr-defined]
        "max_length", "check", "scale", "json", "range", "not_null",
    ]  # fmt: skip
    # Without the validator PostgreSQL refuses the first two itself (SQLSTATE 22001, 23514; it
    # would round 1.001 silently): bisection names each, deterministic, nothing is written.
    for e in bad[:2]:
        with pytest.raises(BadRows) as err:
            await sink.write(m, [ok, e])
        assert err.value.deterministic and set(err.value.errors) == {1}
    assert len(await rows(conn)) == 1


async def test_validators_follow_a_table_altered_while_running(
    sink: PostgresSink, conn: asyncpg.Connection
) -> None:
    from cdcd.app.validation import refresh_targets
    from cdcd.config import loads

    await conn.execute(USER_DDL)
    m = mapping(bookkeeping=True)
    sch = schema(COLS)
    await sink.ensure_table(m, sch)
    v = Validator(await sink.target_definition(m), columns=[c.name for c in sch.columns])
    long_name = ev(Op.UPDATE, {"pk": 1}, values={"name": "tenletters"})
    assert [r for _, r, _ in v.problems(long_name)] == ["max_length"]
    await conn.execute("ALTER TABLE ks.t ALTER COLUMN name TYPE varchar(20)")
    cfg = loads(
        '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://x@h/d"\n'
        '[[tables]]\nsource = "ks.t"\ndestinations = ["pg"]\n'
    )
    await refresh_targets({("ks.t", "pg"): [v]}, {"pg": sink}, cfg)
    assert v.problems(long_name) == []
    assert v.target.columns["name"].max_length == 20
