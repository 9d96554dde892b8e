"""Schemas and change events for the sink contract tests (PostgreSQL, ClickHouse, TimescaleDB)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import CdcOptions, Column, TableSchema, UdtDef, parse_cql_type

__all__ = ["STREAM", "UT", "PgConfig", "ev", "next_wt", "schema"]

UT = UdtDef("ks", "ut", ("a", "b"), (parse_cql_type("int"), parse_cql_type("text")))
STREAM = b"\x01" * 16
_clock = itertools.count(1_700_000_000_000_000, 1000)


def _t(text: str) -> Any:
    return parse_cql_type(text, lambda name: UT)


def next_wt() -> int:
    """The next write time (µs) of the shared test clock (1 ms apart)."""
    return next(_clock)


def schema(cols: list[tuple[str, str, str]], order: tuple[str, ...] = (), *, name: str = "t") -> TableSchema:
    """Table ``ks.<name>`` with CDC on; ``cols`` are (name, CQL type, kind) in key order."""
    pos = {"partition_key": 0, "clustering": 0}
    out = []
    for col, typ, kind in cols:
        p = pos.get(kind, 0)
        out.append(Column(col, _t(typ), kind, p))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    if not order:
        order = tuple("asc" for c in out if c.kind == "clustering")
    return TableSchema(
        keyspace="ks", name=name, columns=tuple(out), clustering_order=order, cdc=CdcOptions(enabled=True)
    )


def ev(
    op: Op, key: dict[str, Any], *, wt: int | None = None, low: int = 0, table: str = "ks.t", **kw: Any
) -> ChangeEvent:
    """A change of ``table`` written at ``wt`` µs (default: ``next_wt()``); its CDC position is
    the timeuuid of ``wt`` with ``low`` in its clock sequence/node bits."""
    wt = wt if wt is not None else next_wt()
    t = uuid.UUID(int=(wt << 64) | 0x8000000000000000 | low)
    return ChangeEvent(
        table=table,
        pos=Position(generation=0, stream_id=STREAM, time=t),
        batch_seq=0,
        op=op,
        write_time_us=wt,
        key=key,
        **kw,
    )


class PgConfig:
    """The config of a PostgreSQL destination as a sink reads it (``dsn``, ``pool_size``)."""

    def __init__(self, dsn: str) -> None:
        self.kind = "postgres"
        self.dsn = dsn
        self.pool_size = 2
