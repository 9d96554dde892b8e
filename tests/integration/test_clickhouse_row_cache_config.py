"""``[destinations.<name>] row_cache_rows`` (ClickHouse): parsed and validated by the config loader,
and handed through the sink registry to the real sink, whose tables then keep a row cache of that
size (off by default). The cache's own behaviour is in tests/contract/test_clickhouse_cache.py."""

from __future__ import annotations

import pytest

from cdcd.app.deps import default_sink_factory, table_mapping
from cdcd.config import ClickHouseDestination, loads
from cdcd.errors import ConfigError
from cdcd.events import Op
from cdcd.sinks.clickhouse import ClickHouseSink
from tests.contract.test_clickhouse_sink import ev, schema

COLS = [("pk", "int", "partition_key"), ("v", "text", "regular"), ("n", "int", "regular")]


def config(url: str, database: str, cache: str) -> str:
    return f"""
[destinations.ch]
type = "clickhouse"
url = "{url}"
{cache}
[[tables]]
source = "ks.t"
destinations = ["ch"]
target = "{database}.t"
"""


@pytest.mark.parametrize(("line", "size"), [("row_cache_rows = 500", 500), ("", 0)])
async def test_row_cache_rows_reaches_the_sink(
    clickhouse_url: str, ch_database: str, line: str, size: int
) -> None:
    cfg = loads(config(clickhouse_url, ch_database, line))
    dest = cfg.destinations["ch"]
    assert isinstance(dest, ClickHouseDestination) and dest.row_cache_rows == size
    sink = default_sink_factory("ch", dest)
    assert isinstance(sink, ClickHouseSink)
    mapping = table_mapping(cfg.tables[0], dest)
    await sink.connect()
    try:
        await sink.ensure_table(mapping, schema(COLS))
        cache = sink._tables[(mapping.source, mapping.target)].cache
        if size == 0:
            assert cache is None
            return
        assert cache is not None and cache.capacity == size
        await sink.write(mapping, [ev(Op.INSERT, {"pk": 1}, values={"v": "a", "n": 1})])
        assert len(cache) == 1
        sink.forget(mapping)
        assert len(cache) == 0
    finally:
        await sink.aclose()


@pytest.mark.parametrize("value", ["-1", '"many"'])
def test_row_cache_rows_must_be_a_count(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(config("http://127.0.0.1:8123", "db", f"row_cache_rows = {value}"), file="cdcd.toml")
    text = str(info.value)
    assert "destinations.ch.row_cache_rows" in text and "expected an integer" in text
