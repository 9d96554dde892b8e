"""Fixtures shared by the sink contract tests: clients that read what a sink wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import clickhouse_connect
import pytest

from cdcd.sinks.postgres import PostgresSink


@pytest.fixture
async def ch(clickhouse_url: str) -> AsyncIterator[Any]:
    """An async clickhouse-connect client on the test ClickHouse endpoint."""
    u = urlsplit(clickhouse_url)
    c = await clickhouse_connect.get_async_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    yield c
    await c.close()


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's PostgreSQL database with the sink's codecs (jsonb, intervals)."""
    c = await asyncpg.connect(pg_dsn)
    await PostgresSink._init_connection(c)
    yield c
    await c.close()
