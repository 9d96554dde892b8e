"""Destinations. ``postgres.py`` is the reference sink: copy its shape (config, connect/healthcheck,
ensure_table, write, classify) when adding one.

Contract of a sink (style.md §7.3):

* ``connect()`` opens pools/clients; it is retried with backoff by the caller.
* ``healthcheck()`` proves the destination answers (start-up, ``cdcd check-config``, ``/readyz``).
* ``ensure_table(mapping, schema)`` creates the target table(s) when missing and
  ``mapping.create`` is true, and adds columns the source gained; it raises ``SchemaMismatch``
  when the target cannot hold the source.
* ``write(mapping, events)`` applies the events of one table, in order, as ONE transaction (or
  one idempotent insert for ClickHouse). It is idempotent: replaying events that were already
  applied changes nothing (version guard on the write time). It raises ``SinkUnavailable``
  (retry everything later) or ``BadRows({index: reason})`` having committed nothing.
* ``aclose()`` releases connections; it never raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import msgspec

from cdcd.events import ChangeEvent
from cdcd.schema import TableSchema

__all__ = ["Sink", "TableMapping", "WriteOutcome", "create_sink", "sink_types"]

DeleteStrategy = Literal["hard", "soft", "tombstone"]


class TableMapping(msgspec.Struct, frozen=True, kw_only=True):
    """Where one source table goes in one destination, and how deletes are applied."""

    source: str  # "keyspace.table" in Scylla
    target_schema: str  # PostgreSQL schema / ClickHouse database
    target_table: str
    delete: DeleteStrategy = "hard"
    create: bool = True  # create missing tables / add missing columns

    @property
    def target(self) -> str:
        return f"{self.target_schema}.{self.target_table}"


class WriteOutcome(msgspec.Struct, frozen=True):
    applied: int  # events whose effect is now in the destination
    skipped_stale: int = 0  # events older than the destination row: skipped by the version guard


class Sink(Protocol):
    name: str

    async def connect(self) -> None: ...

    async def healthcheck(self) -> None: ...

    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None: ...

    async def write(self, mapping: TableMapping, events: Sequence[ChangeEvent]) -> WriteOutcome: ...

    async def aclose(self) -> None: ...


# type name -> "module:Class"; imported lazily so a missing optional client does not break the rest.
_REGISTRY = {
    "postgres": "cdcd.sinks.postgres:PostgresSink",
    "timescaledb": "cdcd.sinks.timescale:TimescaleSink",
    "clickhouse": "cdcd.sinks.clickhouse:ClickHouseSink",
}


def sink_types() -> list[str]:
    return sorted(_REGISTRY)


def create_sink(name: str, config: Any) -> Sink:
    """Build the sink for one ``[destinations.<name>]`` section (its ``type`` picks the class)."""
    kind = getattr(config, "kind", None) or getattr(config, "type", None)
    if kind not in _REGISTRY:
        raise ValueError(f"destination {name!r}: unknown type {kind!r}; expected one of {sink_types()}")
    module, _, cls = _REGISTRY[kind].partition(":")
    sink: Sink = getattr(importlib.import_module(module), cls)(name, config)
    return sink
