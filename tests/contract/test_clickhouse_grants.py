"""``ClickHouseSink.missing_grants`` asks ClickHouse itself (``CHECK GRANT``) for each privilege of
docs/permissions.md: on the real engine every statement it sends parses and runs, and for the
``default`` user (who holds every privilege) nothing is missing, for a database that exists and
for one cdcd would create. (The test endpoint has no other users, so the "missing" answer of
``CHECK GRANT`` cannot be produced here; docs/permissions.md says so.)"""

from __future__ import annotations

from cdcd.config import loads
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse.sink import ClickHouseSink


async def test_default_user_lacks_nothing(clickhouse_url: str, ch_database: str) -> None:
    cfg = loads(
        f'[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'
        '[[tables]]\nsource = "a.b"\ndestinations = ["ch"]\n'
    )
    sink = ClickHouseSink("ch", cfg.destinations["ch"])
    try:
        mappings = [
            TableMapping(source="a.b", target_schema=ch_database, target_table="t"),
            TableMapping(source="a.c", target_schema="not_created_yet", target_table="t"),
            TableMapping(source="a.d", target_schema=ch_database, target_table="u", create=False),
        ]
        assert await sink.missing_grants(mappings) == []
    finally:
        await sink.aclose()
