"""ClickHouse destination (R-11): ``sink.py`` (``ClickHouseSink``), ``types.py`` (type map, value
conversion), ``sql.py`` (layout, DDL, read-back query), ``codec.py`` (per-table codec), ``prepare.py``
(events -> ClickHouse values), ``fold.py`` (batch -> full rows, pure), ``cache.py`` (optional row
cache), ``classify.py`` (exception -> action), ``wire.py`` (Native blocks, dedup tokens, parameters).

``ClickHouseSink`` is imported on first use, so the pure modules can be imported without loading
the sink and its client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdcd.sinks.clickhouse.sink import ClickHouseSink

__all__ = ["ClickHouseSink"]


def __getattr__(name: str) -> Any:
    if name == "ClickHouseSink":
        from cdcd.sinks.clickhouse.sink import ClickHouseSink

        return ClickHouseSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
