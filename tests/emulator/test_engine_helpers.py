"""Helpers shared by the engine tests: run CQL with Python values and get rows as dicts."""

from __future__ import annotations

from typing import Any

from tests.scylla_emulator.api import RowsResult
from tests.scylla_emulator.engine import EmulatorEngine

KS = "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"


def new_engine() -> EmulatorEngine:
    e = EmulatorEngine(vnodes=4, shards=2)
    e.execute_decoded(KS)
    return e


def rows(e: EmulatorEngine, cql: str, *values: Any, **kw: Any) -> list[dict[str, Any]]:
    r = e.execute_decoded(cql, list(values), keyspace="ks", **kw)
    assert isinstance(r, RowsResult), r
    names = [c.name for c in r.columns]
    return [dict(zip(names, row, strict=True)) for row in r.rows]


def run(e: EmulatorEngine, cql: str, *values: Any, **kw: Any) -> Any:
    return e.execute_decoded(cql, list(values), keyspace="ks", **kw)
