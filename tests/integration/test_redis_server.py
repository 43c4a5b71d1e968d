"""The private Redis that `llmaas up` starts: real server, PING, and nothing left after stop."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.embedded.redis_server import RedisStartError, ping, running_redis
from gateway.netutil import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_private_redis_starts_answers_and_stops() -> None:
    async with running_redis(None) as url:
        client = Redis.from_url(url)
        try:
            await client.set("k", "v")
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()
    assert not await ping(url, 0.5)


async def test_given_url_is_used_after_a_ping() -> None:
    async with running_redis(None) as private, running_redis(private) as url:
        assert url == private


async def test_unreachable_url_is_a_clear_error() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisStartError, match="does not answer PING"):
        async with running_redis(dead):
            pass
