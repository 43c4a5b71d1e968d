"""`llmaas up`'s development key, against a real Redis: the kept one while it works, else a new
one of the tenant `dev` (each run used to issue a new one)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.auth.api_keys import parse_key
from gateway.auth.store import AuthStore
from gateway.embedded.dev_credentials import DevCredentials, dev_key
from gateway.embedded.redis_server import running_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")

PEPPER = b"dev-credentials-pepper"


@pytest_asyncio.fixture(loop_scope="session")
async def redis_url() -> AsyncIterator[str]:
    async with running_redis(None) as url:
        yield url


async def _dev_keys(redis_url: str) -> list[str]:
    redis = Redis.from_url(redis_url)
    try:
        records, _ = await AuthStore(redis).page_keys("dev", 100, None)
    finally:
        await redis.aclose()
    return [r.id for r in records]


async def _change(redis_url: str, key: str, **fields: object) -> None:
    parsed = parse_key(key)
    assert parsed is not None
    redis = Redis.from_url(redis_url)
    try:
        store = AuthStore(redis)
        record = await store.get_key(parsed[0])
        assert record is not None
        await store.put_key(record.model_copy(update=fields))
    finally:
        await redis.aclose()


async def test_the_kept_key_is_shown_again_while_it_works(redis_url: str) -> None:
    first = await dev_key(redis_url, PEPPER, None)
    again = await dev_key(redis_url, PEPPER, DevCredentials(first, "token"))
    assert again == first
    assert len(await _dev_keys(redis_url)) == 1  # none piled up


@pytest.mark.parametrize(
    "why", ["revoked", "expired", "deleted", "another pepper", "not a key", "another Redis"]
)
async def test_a_kept_key_that_no_longer_works_is_replaced(redis_url: str, why: str) -> None:
    first = await dev_key(redis_url, PEPPER, None)
    pepper = PEPPER
    if why == "revoked":
        await _change(redis_url, first, revoked=True)
    elif why == "expired":
        await _change(redis_url, first, expires_at=time.time() - 1)
    elif why == "deleted":
        redis = Redis.from_url(redis_url)
        await redis.flushall()
        await redis.aclose()
    elif why == "another pepper":
        pepper = b"another-pepper-altogether"
    elif why == "not a key":
        first = "sk-llmaas-not-a-key"
    async with running_redis(None) as other:
        where = other if why == "another Redis" else redis_url
        replaced = await dev_key(where, pepper, DevCredentials(first, "token"))
        assert replaced != first
        assert parse_key(replaced) is not None
        again = await dev_key(where, pepper, DevCredentials(replaced, "token"))
        assert again == replaced  # and kept from then on
