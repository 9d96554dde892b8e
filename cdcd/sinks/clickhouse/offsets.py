"""The ClickHouse offsets table (layout: ``cdcd.sinks.offsets``): DDL, the block inserted after a
batch's data blocks, and the reads used on start.

ClickHouse has no transaction spanning two tables, so the order makes it safe: the offsets block
is inserted only after every data block of the batch was acknowledged, with the batch's
``insert_deduplication_token`` plus a digest of the positions. A crash between the inserts leaves
the offsets behind the data (the replay is deduplicated or collapsed by ReplacingMergeTree), never
ahead of it; a retried batch inserts its offsets block once (the token drops the copy). The table
is a ``ReplacingMergeTree(position_us)``: per stream the newest position wins, whatever the
insert order; reads use ``FINAL``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cdcd.events import Position
from cdcd.sinks.clickhouse.sql import ident
from cdcd.sinks.clickhouse.wire import Block
from cdcd.sinks.offsets import Applied, offsets_location, rows_of

__all__ = ["COLUMNS", "ChOffsets"]

COLUMNS = {
    "destination": "String",
    "source_table": "String",
    "generation": "Int64",
    "stream_id": "String",
    "position": "UUID",
    "position_us": "UInt64",
    "start_ms": "Int64",
    "updated_at": "DateTime64(6, 'UTC')",
}


class ChOffsets:
    """Statements and blocks of the offsets table serving one mapping of one destination."""

    def __init__(self, destination: str, config: Any, source: str, target_schema: str) -> None:
        self.destination = destination
        self.source = source
        self.database, self.table = offsets_location(config, target_schema)
        self.name = f"{ident(self.database)}.{ident(self.table)}"
        cols = ", ".join(f"{ident(n)} {t}" for n, t in COLUMNS.items())
        self.ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}) ENGINE = ReplacingMergeTree(position_us) "
            "ORDER BY (destination, source_table, generation, stream_id) "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
        self.select = (
            f"SELECT stream_id, position FROM {self.name} FINAL WHERE destination = {{d:String}} "
            "AND source_table = {s:String} AND generation = {g:Int64} AND stream_id IN {ids:Array(String)}"
        )
        self.select_start = (
            f"SELECT start_ms FROM {self.name} FINAL WHERE destination = {{d:String}} "
            "AND source_table = {s:String} ORDER BY generation DESC, updated_at DESC LIMIT 1"
        )

    def block(self, applied: Applied) -> Block:
        """The rows of ``applied`` as one insert block."""
        now = dt.datetime.now(dt.UTC)
        gen = applied.generation
        records = [
            {
                "destination": self.destination,
                "source_table": self.source,
                "generation": gen,
                "stream_id": stream.hex(),
                "position": time,
                "position_us": micros,
                "start_ms": applied.start_ms,
                "updated_at": now,
            }
            for stream, time, micros in rows_of(applied)
        ]
        return Block.from_records("offsets", self.name, COLUMNS, records, [[] for _ in records])

    @staticmethod
    def token(batch_token: str, applied: Applied) -> str:
        """The batch's token plus a digest of the positions: the same batch recording the same
        positions again is dropped by ClickHouse; other positions are a new block."""
        h = hashlib.blake2b(digest_size=8)
        h.update(applied.start_ms.to_bytes(8, "big", signed=True))
        for stream, time, _ in sorted(rows_of(applied)):
            h.update(stream)
            h.update(time.bytes)
        return f"{batch_token}:offsets:{h.hexdigest()}"

    def params(self, generation: int | None = None, streams: list[bytes] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"d": self.destination, "s": self.source}
        if generation is not None:
            out["g"] = generation
        if streams is not None:
            out["ids"] = [s.hex() for s in streams]
        return out

    @staticmethod
    def positions(rows: Any, generation: int) -> dict[bytes, Position]:
        out: dict[bytes, Position] = {}
        for stream_hex, time in rows:
            stream = bytes.fromhex(str(stream_hex))
            out[stream] = Position(generation=generation, stream_id=stream, time=time)
        return out
