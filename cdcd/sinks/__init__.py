"""Destinations. ``postgres/sink.py`` is the reference sink: copy its shape (config,
connect/healthcheck, ensure_table, write, classify) when adding one.

Layout: one sub-package per destination (``postgres/``, ``clickhouse/``: ``sink.py`` plus its
type map, SQL, fold and helpers); ``timescale.py`` builds on the PostgreSQL sink. Shared here:
this protocol and registry, ``classify.py`` (PostgreSQL-family exception -> action, whose
``Action`` ClickHouse reuses) and ``layout.py`` (what both table layouts share).

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

Modules are imported lazily by ``create_sink``, so importing ``cdcd.sinks`` (the protocol, for
type hints) never imports a client library and no sink module imports back into a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from cdcd.errors import ConfigError
from cdcd.events import ChangeEvent
from cdcd.schema import TableSchema

__all__ = ["Sink", "Skipped", "TableMapping", "WriteOutcome", "config_secret", "create_sink", "sink_types"]

DeleteStrategy = Literal["hard", "soft", "tombstone"]
StalenessStrategy = Literal["timestamp", "version", "hybrid"]


class TableMapping(msgspec.Struct, frozen=True, kw_only=True):
    """Where one source table goes in one destination, and how deletes are applied."""

    source: str  # "keyspace.table" in Scylla
    target_schema: str  # PostgreSQL schema / ClickHouse database
    target_table: str
    delete: DeleteStrategy = "hard"
    create: bool = True  # create missing tables / add missing columns
    # Version guard: "timestamp" (CQL write time), "version" (``version_column``: a lower
    # version is stale), "hybrid" (version, then write time on ties). See cdcd.sinks.outcome.
    staleness: StalenessStrategy = "timestamp"
    version_column: str | None = None
    # add cdcd's bookkeeping columns (version guard, soft delete) to an existing table that lacks
    # them; None: only when ``create``. Off and missing: refused with the ALTER statements to run
    bookkeeping: bool | None = None
    # source column -> the destination column type cdcd uses when it creates the table/column
    column_types: dict[str, str] = {}

    @property
    def target(self) -> str:
        return f"{self.target_schema}.{self.target_table}"


class Skipped(msgspec.Struct, frozen=True):
    """One event the version guard skipped (``WriteOutcome.skipped``).

    ``reason``: ``"duplicate"`` (a replay: the row already holds this event's version, or a later
    event of the same batch that it had already been folded under) or ``"stale"`` (older than the
    row: the staleness audit records it). ``row_write_time_us``/``row_version``: what the
    destination row holds (its write time in µs; its ``version_column`` value, if any)."""

    index: int  # into the ``events`` handed to ``write``
    reason: Literal["stale", "duplicate"]
    row_write_time_us: int | None = None
    row_version: Any = None


class WriteOutcome(msgspec.Struct, frozen=True):
    """What one ``Sink.write`` did. ``applied + skipped_stale == len(events)``.

    ``skipped`` names, per event, those the version guard skipped (duplicates and stale ones);
    ``skipped_stale`` is their number (kept for callers that only count)."""

    applied: int  # events whose effect is now in the destination
    skipped_stale: int = 0  # events skipped by the version guard (stale or duplicate)
    skipped: tuple[Skipped, ...] = ()

    @property
    def duplicates(self) -> int:
        return sum(1 for s in self.skipped if s.reason == "duplicate")

    @property
    def stale(self) -> int:
        """Stale events (an outcome without per-event detail: every skipped one)."""
        if not self.skipped:
            return self.skipped_stale
        return sum(1 for s in self.skipped if s.reason == "stale")


class Sink(Protocol):
    """One destination. Built by ``create_sink``; one instance serves every table mapped to it and
    may be used by several pipelines (tasks) at once. Sinks never retry by themselves: the
    pipeline owns retries, backoff and the circuit breaker (flow/writer.py)."""

    name: str  # the ``[destinations.<name>]`` key, for logs and metrics

    async def connect(self) -> None:
        """Open connections/pools. Called once at start-up and again after failures; idempotent.
        Raises ``SinkUnavailable`` when the destination cannot be reached (retried with backoff)
        and ``ConfigError``/``SchemaMismatch`` for configuration that can never work."""
        ...

    async def healthcheck(self) -> None:
        """One cheap round trip proving the destination answers (start-up, ``cdcd check-config``,
        ``/readyz``). Raises ``SinkUnavailable``."""
        ...

    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        """Prepare the target of one source table before its first write and after every schema
        change: create missing tables/columns when ``mapping.create``, else check they exist.
        Safe to run concurrently from several replicas. Raises ``SchemaMismatch`` when the target
        cannot hold the source (bad names, incompatible existing columns, missing tables)."""
        ...

    async def write(self, mapping: TableMapping, events: Sequence[ChangeEvent]) -> WriteOutcome:
        """Apply ``events`` of one table (stream order; any mix of inserts, updates, deletes) as one
        atomic, idempotent unit: replaying applied events changes nothing. Raises
        ``SinkUnavailable`` (nothing committed; retry the whole batch), ``BadRows({index:
        reason})`` (nothing committed; those events can never be written, the others can), or
        ``SchemaMismatch`` (``ensure_table`` was not called). May block for the round trips."""
        ...

    async def aclose(self) -> None:
        """Release connections; never raises. The sink may be connected again afterwards."""
        ...


# type name -> "module:Class"; imported lazily so a missing optional client does not break the rest.
_REGISTRY = {
    "postgres": "cdcd.sinks.postgres.sink:PostgresSink",
    "timescaledb": "cdcd.sinks.timescale:TimescaleSink",
    "clickhouse": "cdcd.sinks.clickhouse.sink:ClickHouseSink",
}


def sink_types() -> list[str]:
    """The ``type`` names ``create_sink`` accepts."""
    return sorted(_REGISTRY)


def create_sink(name: str, config: Any) -> Sink:
    """Build the sink for one ``[destinations.<name>]`` section (its ``type`` picks the class).
    Nothing is connected yet. Raises ``ConfigError`` for an unknown type."""
    kind = getattr(config, "kind", None) or getattr(config, "type", None)
    if kind not in _REGISTRY:
        raise ConfigError(
            f"unknown destination type {kind!r}; expected one of {sink_types()}",
            key=f"destinations.{name}.type",
        )
    module, _, cls = _REGISTRY[kind].partition(":")
    sink: Sink = getattr(importlib.import_module(module), cls)(name, config)
    return sink


def config_secret(config: Any, name: str) -> str | None:
    """The destination secret ``name`` of ``config``: its ``Secret`` (the config loader has already
    read ``<name>_file`` into it), else, for a config built without the loader (tests, embedding),
    the file named by ``<name>_file`` (trailing newline ignored, as the loader does)."""
    value = getattr(config, name, None)
    if value:
        return str(value.get() if hasattr(value, "get") else value)
    path = getattr(config, f"{name}_file", None)
    if path:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    return None
