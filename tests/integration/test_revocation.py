"""Two gateway processes sharing one Redis: a revocation, a rotation or a change of a key's
settings on one holds on the other within 1 s; a tenant's deletion, well before the cache's
30 s would have dropped its keys."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL
from tests.integration.sim_fixture import running_sim_process
from tests.support.gateways import gateway_process, shared_config

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def status(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}) as resp:
        return resp.status


async def refused_within_one_second(http: aiohttp.ClientSession, base: str, key: str) -> bool:
    """Whether `key` is refused on `base` before one second has passed."""
    return await refused_within(http, base, key, 1.0)


async def refused_within(http: aiohttp.ClientSession, base: str, key: str, seconds: float) -> bool:
    """Whether `key` is refused on `base` before `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await status(http, base, key) == 401:
            return True
        await asyncio.sleep(0.02)
    return False


async def models_within_one_second(
    http: aiohttp.ClientSession, base: str, key: str, expected: list[str]
) -> bool:
    """Whether `key` sees exactly `expected` at /v1/models on `base` before one second passed."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        headers = {"authorization": f"Bearer {key}"}
        async with http.get(f"{base}/v1/models", headers=headers) as resp:
            if [m["id"] for m in (await resp.json())["data"]] == expected:
                return True
        await asyncio.sleep(0.02)
    return False


async def test_revocation_rotation_and_changes_reach_the_other_process(tmp_path: Path) -> None:
    async with (
        running_redis(None) as redis_url,
        running_sim_process(SimConfig(models=[MODEL])) as sim,
    ):
        config = shared_config(tmp_path / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim)
        async with (
            gateway_process(config) as gw_a,
            gateway_process(config) as gw_b,
            aiohttp.ClientSession() as http,
        ):
            a, b = gw_a.url, gw_b.url
            async with http.post(f"{a}/admin/v1/keys", json={"tenant": "t"}, headers=ADMIN) as resp:
                created = await resp.json()
            key, key_id = created["key"], created["id"]
            assert await status(http, a, key) == 200
            assert await status(http, b, key) == 200  # now cached in b

            for models, seen in (([], []), (None, [MODEL])):  # allow none, then every model
                url = f"{a}/admin/v1/keys/{key_id}"
                async with http.patch(url, json={"models": models}, headers=ADMIN) as resp:
                    assert resp.status == 200
                assert await models_within_one_second(http, b, key, seen)

            async with http.post(f"{a}/admin/v1/keys/{key_id}/rotate", headers=ADMIN) as resp:
                new_key = (await resp.json())["key"]
            assert await refused_within_one_second(http, b, key)
            assert await status(http, b, new_key) == 200

            async with http.delete(f"{a}/admin/v1/keys/{key_id}", headers=ADMIN) as resp:
                assert resp.status == 200
            assert await refused_within_one_second(http, b, new_key)

            # A tenant's deletion revokes its keys through the same feed: refused on b long
            # before b's cache (auth.cache_ttl_s, 30 s) would have read the key again.
            keys = []
            for _ in range(2):
                url = f"{a}/admin/v1/keys"
                async with http.post(url, json={"tenant": "leaving"}, headers=ADMIN) as resp:
                    keys.append((await resp.json())["key"])
            assert [await status(http, b, k) for k in keys] == [200, 200]  # cached in b
            async with http.delete(f"{a}/admin/v1/tenants/leaving", headers=ADMIN) as resp:
                assert (resp.status, (await resp.json())["keys_revoked"]) == (200, 2)
            for k in keys:
                assert await refused_within(http, b, k, 10.0)
