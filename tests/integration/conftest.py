"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from cdcd.state import CheckpointStore, DeadLetterStore


@pytest.fixture
async def stores(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[CheckpointStore, DeadLetterStore]]:
    """A checkpoint store and a dead-letter store on the test Redis, under the test's own prefix."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield CheckpointStore(client, prefix=redis_prefix), DeadLetterStore(client, prefix=redis_prefix)
    finally:
        await client.aclose()
