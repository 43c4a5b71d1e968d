"""Waiting until a gateway's key cache holds a key, for tests that then take Redis away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from gateway.auth.authenticate import Authenticator
from gateway.auth.store import CHANNEL


async def request_until_cached(
    auth: Authenticator, key_id: str, tenant: str, request: Callable[[], Awaitable[object]]
) -> None:
    """`request` (which uses the key) until the key and its tenant are in the gateway's cache:
    the key's creation publishes an invalidation, and heard late on a busy machine it leaves a
    read it overtook uncached, so a test that then stops Redis would meet the key check."""
    keys, tenants = auth.cache.keys, auth.cache.tenants
    for _ in range(5):
        await request()
        if keys.get(key_id)[0] and tenants.get(tenant)[0]:
            return
    raise AssertionError("the key never stayed in the gateway's cache")


async def _subscribers(redis: Redis) -> int:
    return int(dict(await redis.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0))


async def auth_feed_subscribed(redis_url: str) -> None:
    """Until a gateway's key-cache invalidation feed is subscribed (a gateway in another
    process): it empties the cache once confirmed, and on a busy machine that came after the
    request meant to cache the key."""
    redis = Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(10):
            while not await _subscribers(redis):  # noqa: ASYNC110 (Redis: no event to await)
                await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
