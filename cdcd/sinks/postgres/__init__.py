"""PostgreSQL destination (R-10), the reference sink: ``sink.py`` (``PostgresSink``), ``types.py``
(type map, value conversion), ``sql.py`` (identifiers, DDL, statement texts), ``fold.py`` (batch ->
row plans, pure), ``table.py`` (per-mapping state, codecs, table checks). TimescaleDB
(``cdcd/sinks/timescale.py``) builds on it.

``PostgresSink`` is imported on first use, so the pure modules (``types``, ``sql``, ``fold``) can be
imported without loading the sink and its client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdcd.sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]


def __getattr__(name: str) -> Any:
    if name == "PostgresSink":
        from cdcd.sinks.postgres.sink import PostgresSink

        return PostgresSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
