"""The PostgreSQL sink as a role holding exactly the grants of docs/permissions.md ("PostgreSQL and
TimescaleDB"): with ``create_tables`` on (the first block) and off (the second, on tables an
administrator created): set-up, writes recording their positions, and the reads of the offsets
table all work."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from cdcd.events import Op, Position
from cdcd.scylla.windows import min_timeuuid
from cdcd.sinks import TableMapping
from cdcd.sinks.offsets import Applied
from cdcd.sinks.postgres import PostgresSink
from tests.contract.builders import STREAM, schema
from tests.contract.test_postgres_sink import ev

ROOT = Path(__file__).resolve().parents[2]
GEN = 1_690_000_000_000
TABLE = schema([("pk", "int", "partition_key"), ("ck", "int", "clustering"), ("s", "text", "static"),
                ("v", "text", "regular")])  # fmt: skip


def grant_blocks() -> list[str]:
    text = (ROOT / "docs" / "permissions.md").read_text()
    section = text.split("### PostgreSQL and TimescaleDB", 1)[1].split("### ClickHouse", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "docs/permissions.md: expected two sql blocks for PostgreSQL"
    return blocks


def statements(block: str, role: str, database: str) -> list[str]:
    sql = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    sql = sql.replace("cdcd_writer", role).replace("analytics", f'"{database}"')
    sql = (
        sql.replace("shop.orders", "ks.t")
        .replace("shop.cdcd_offsets", "ks.cdcd_offsets")
        .replace("shop", "ks")
    )
    return [s.strip() for s in sql.split(";") if s.strip()]


class Config:
    def __init__(self, dsn: str) -> None:
        self.kind = "postgres"
        self.dsn = dsn
        self.pool_size = 2


@pytest.fixture
def role(pg_dsn: str) -> Iterator[str]:
    name = f"cdcd_writer_{uuid.uuid4().hex[:8]}"
    yield name


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}:choose-a-password@", 1)


async def exercise(sink: PostgresSink, create: bool, ms: int) -> None:
    m = TableMapping(source="ks.t", target_schema="ks", target_table="t", delete="tombstone", create=create)
    await sink.ensure_table(m, TABLE)
    p = Position(generation=GEN, stream_id=STREAM, time=min_timeuuid((GEN + ms) * 1000))
    batch = [
        ev(Op.INSERT, {"pk": 1, "ck": 1}, values={"v": "a"}),
        ev(Op.UPDATE, {"pk": 1}, static=True, values={"s": "x"}),
        ev(Op.ROW_DELETE, {"pk": 1, "ck": 1}),
        ev(Op.INSERT, {"pk": 2, "ck": 1}, values={"v": "b"}),
    ]
    assert (await sink.write(m, batch, Applied(positions={STREAM: p}, start_ms=GEN))).applied == 4
    assert await sink.load_applied(m, GEN, [STREAM]) == {STREAM: p}
    assert await sink.applied_start(m) == GEN
    later = Position(generation=GEN, stream_id=STREAM, time=min_timeuuid((GEN + ms + 1) * 1000))
    await sink.record_applied(m, Applied(positions={STREAM: later}, start_ms=GEN))
    assert await sink.load_applied(m, GEN, [STREAM]) == {STREAM: later}


async def test_the_documented_grants_suffice_for_the_postgres_sink(pg_dsn: str, role: str) -> None:
    create_block, existing_block = grant_blocks()
    database = pg_dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_dsn)
    try:
        for stmt in statements(create_block, role, database):
            await admin.execute(stmt)
        # create_tables on: the role creates schema, tables and the offsets table itself.
        sink = PostgresSink("pg", Config(as_role(pg_dsn, role)))
        try:
            await exercise(sink, create=True, ms=5)
        finally:
            await sink.aclose()
        owner = await admin.fetchval(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'ks' AND tablename = 'cdcd_offsets'"
        )
        assert owner == role
        # create_tables off: an administrator owns the tables; a second role has the second block.
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO postgres')
        await admin.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM "{role}"')
        await admin.execute(f'REVOKE ALL ON SCHEMA ks FROM "{role}"')
        other = f"{role}_b"
        await admin.execute(f"CREATE ROLE \"{other}\" WITH LOGIN PASSWORD 'choose-a-password'")
        for stmt in statements(existing_block, other, database):
            await admin.execute(stmt)
        sink = PostgresSink("pg", Config(as_role(pg_dsn, other)))
        try:
            await exercise(sink, create=False, ms=50)
        finally:
            await sink.aclose()
        # Without the offsets grant the writes fail: the grant is needed, not decoration.
        await admin.execute(f'REVOKE INSERT, UPDATE ON ks.cdcd_offsets FROM "{other}"')
        sink = PostgresSink("pg", Config(as_role(pg_dsn, other)))
        try:
            m = TableMapping(
                source="ks.t", target_schema="ks", target_table="t", delete="tombstone", create=False
            )
            await sink.ensure_table(m, TABLE)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await sink.record_applied(m, Applied(positions={STREAM: Position(
                    generation=GEN, stream_id=STREAM, time=min_timeuuid((GEN + 20) * 1000))}, start_ms=GEN))  # fmt: skip
        finally:
            await sink.aclose()
    finally:
        for r in (role, f"{role}_b"):
            try:
                await admin.execute(f'DROP OWNED BY "{r}"')
                await admin.execute(f'DROP ROLE "{r}"')
            except asyncpg.UndefinedObjectError:
                pass
        await admin.close()
