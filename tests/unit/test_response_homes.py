"""gateway/api/response_homes.py without Redis: ids are per tenant, bounded, and expire."""

from __future__ import annotations

import asyncio

from gateway.api.response_homes import Home, MemoryHomes, home_key

HOME = Home("m", "http://engine-1")


async def test_an_id_is_found_by_its_tenant_only() -> None:
    homes = MemoryHomes(60, 10)
    await homes.remember("acme", "resp_1", HOME)
    assert await homes.find("acme", "resp_1") == HOME
    assert await homes.find("globex", "resp_1") is None
    assert not await homes.forget("globex", "resp_1")
    assert await homes.forget("acme", "resp_1")
    assert await homes.find("acme", "resp_1") is None


async def test_the_oldest_ids_are_forgotten_beyond_the_bound() -> None:
    homes = MemoryHomes(60, 2)
    for i in range(3):
        await homes.remember("acme", f"resp_{i}", HOME)
    assert await homes.find("acme", "resp_0") is None
    assert await homes.find("acme", "resp_2") == HOME


async def test_an_id_expires_after_the_ttl() -> None:
    homes = MemoryHomes(0.05, 10)
    await homes.remember("acme", "resp_1", HOME)
    await asyncio.sleep(0.1)
    assert await homes.find("acme", "resp_1") is None


def test_the_redis_key_carries_the_tenants_hash_tag() -> None:
    assert home_key("acme", "resp_1") == "llmaas:{t:acme}:resp:resp_1"
