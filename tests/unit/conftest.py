"""A real Redis for the unit tests of Redis scripts: one server per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.redis_client import redis_client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis() -> AsyncIterator[Redis]:
    async with running_redis(None) as url:
        client = redis_client(url, timeout_s=5.0, max_connections=64)
        try:
            yield client
        finally:
            await client.aclose()
