"""The PostgreSQL (and TimescaleDB) offsets table: DDL, the upsert run inside each write's
transaction, and the reads used on start (layout: ``cdcd.sinks.offsets``)."""

from __future__ import annotations

from typing import Any

import asyncpg

from cdcd.errors import SchemaMismatch
from cdcd.events import Position
from cdcd.sinks.offsets import Applied, offsets_location, rows_of
from cdcd.sinks.postgres.sql import ident, qualified

__all__ = ["PgOffsets"]

_COLUMNS = {
    "destination": "text",
    "source_table": "text",
    "generation": "bigint",
    "stream_id": "bytea",
    "position": "uuid",
    "position_us": "bigint",
    "start_ms": "bigint",
    "updated_at": "timestamp with time zone",
}


class PgOffsets:
    """Statements on the offsets table serving one mapping of one destination."""

    def __init__(self, destination: str, config: Any, source: str, target_schema: str) -> None:
        self.destination = destination
        self.source = source
        self.schema, self.table = offsets_location(config, target_schema)
        self.name = qualified(self.schema, self.table)  # validated and quoted
        self.ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.name} ("
            "destination text NOT NULL, source_table text NOT NULL, generation bigint NOT NULL, "
            "stream_id bytea NOT NULL, position uuid NOT NULL, position_us bigint NOT NULL, "
            "start_ms bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (destination, source_table, generation, stream_id))"
        )
        # A position only moves forward: a late or repeated write of an older one changes nothing.
        self.upsert = (
            f"INSERT INTO {self.name} AS o "
            "(destination, source_table, generation, stream_id, position, position_us, start_ms) "
            "SELECT $1, $2, $3, x.s, x.p, x.u, $4 "
            "FROM unnest($5::bytea[], $6::uuid[], $7::bigint[]) AS x(s, p, u) "
            "ON CONFLICT (destination, source_table, generation, stream_id) DO UPDATE SET "
            "position = excluded.position, position_us = excluded.position_us, "
            "start_ms = excluded.start_ms, updated_at = now() "
            "WHERE o.position_us <= excluded.position_us"
        )
        self.select = (
            f"SELECT stream_id, position FROM {self.name} "
            "WHERE destination = $1 AND source_table = $2 AND generation = $3 AND stream_id = ANY($4::bytea[])"
        )
        self.select_start = (
            f"SELECT start_ms FROM {self.name} WHERE destination = $1 AND source_table = $2 "
            "ORDER BY generation DESC, updated_at DESC LIMIT 1"
        )

    async def ensure(self, conn: asyncpg.Connection, create: bool) -> None:
        """Create the table (``create``) or check that it exists with every column; the caller
        holds the schema's advisory lock and a transaction."""
        if create:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema)}")
            await conn.execute(self.ddl)
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            self.schema,
            self.table,
        )
        missing = sorted(set(_COLUMNS) - {r["column_name"] for r in rows})
        if missing:
            what = "does not exist" if not rows else f"lacks columns {missing}"
            raise SchemaMismatch(
                f"offsets table {self.schema}.{self.table} {what} and create_tables is off; create it with: "
                f"{self.ddl}"
            )

    async def record(self, conn: asyncpg.Connection, applied: Applied) -> None:
        """Upsert ``applied`` (inside the caller's transaction)."""
        rows = rows_of(applied)
        if not rows:
            return
        streams, times, micros = (list(c) for c in zip(*rows, strict=True))
        await conn.execute(
            self.upsert, self.destination, self.source, applied.generation, applied.start_ms,
            streams, times, micros,
        )  # fmt: skip

    async def load(
        self, conn: asyncpg.Connection, generation: int, streams: list[bytes]
    ) -> dict[bytes, Position]:
        rows = await conn.fetch(self.select, self.destination, self.source, generation, streams)
        return {
            bytes(r["stream_id"]): Position(
                generation=generation, stream_id=bytes(r["stream_id"]), time=r["position"]
            )
            for r in rows
        }

    async def start(self, conn: asyncpg.Connection) -> int | None:
        value = await conn.fetchval(self.select_start, self.destination, self.source)
        return None if value is None else int(value)
