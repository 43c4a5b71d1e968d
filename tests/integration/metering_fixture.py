"""A gateway metering into a Redis that tests can restart, reached through a proxy that can
refuse connections or swallow replies; the simulator as its engine."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest_asyncio

from gateway.app import create_app
from gateway.metering.record import UsageRecord
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import DEAD_MODEL, MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import ADMIN_TOKEN, OPS, PEPPER, admin_request
from tests.support.redis_control import RedisProxy, RestartableRedis, redis_proxy
from tests.support.servers import serve_asgi
from tests.support.usage_records import ledger_records

TOKENS = 8  # the simulator's completion length


@dataclass(frozen=True, slots=True)
class Meter:
    gateway: str
    redis_server: RestartableRedis
    proxy: RedisProxy  # the gateway reaches Redis through it
    http: aiohttp.ClientSession

    async def new_key(self, tenant: str, **fields: Any) -> str:
        status, body = await admin_request(
            self.http, self.gateway, "POST", "/keys", {"tenant": tenant, **fields}
        )
        assert status == 201, body
        key: str = body["key"]
        return key

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)

    async def records(self, tenant: str) -> list[UsageRecord]:
        """Straight from Redis (not through the proxy, not through the API)."""
        return await ledger_records(self.redis_server.url, tenant)

    async def wait_records(
        self, tenant: str, count: int, timeout_s: float = 15.0
    ) -> list[UsageRecord]:
        """Once `count` records are there, a moment more to catch any extra (duplicate) one."""
        async with asyncio.timeout(timeout_s):
            while len(await self.records(tenant)) < count:  # noqa: ASYNC110 (polling Redis)
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        return await self.records(tenant)

    async def pending(self) -> float:
        async with self.http.get(f"{self.gateway}/metrics", headers=OPS) as resp:
            text = await resp.text()
        found = re.search(r"^llmaas_usage_pending_records (\S+)$", text, re.M)
        assert found, "llmaas_usage_pending_records missing from /metrics"
        return float(found.group(1))


@pytest_asyncio.fixture(name="meter", scope="module", loop_scope="session")
async def meter_fixture() -> AsyncIterator[Meter]:
    with tempfile.TemporaryDirectory(prefix="llmaas-meter-") as tmp:
        (Path(tmp) / "redis").mkdir()
        redis_server = RestartableRedis(Path(tmp) / "redis")
        await redis_server.start()
        try:
            async with (
                redis_proxy(redis_server.port) as proxy,
                running_sim(SimConfig(models=[MODEL], max_tokens=TOKENS, itl_ms=5)) as sim,
            ):
                settings = Settings.model_validate(
                    {
                        "models": [
                            {"name": MODEL, "engines": [sim]},
                            {"name": DEAD_MODEL, "engines": ["http://127.0.0.1:9"]},
                        ],
                        "redis_url": proxy.url,
                        "admin_token": ADMIN_TOKEN,
                        "key_pepper": PEPPER,
                        "upstream": {"response_timeout_s": 1.0, "stream_idle_timeout_s": 1.0},
                        "metering": {
                            "spill_dir": f"{tmp}/spill",
                            "write_timeout_s": 0.3,
                            "retry_max_interval_s": 0.5,
                        },
                    }
                )
                async with (
                    serve_asgi(create_app(settings)) as gateway,
                    aiohttp.ClientSession() as http,
                ):
                    yield Meter(gateway, redis_server, proxy, http)
        finally:
            await redis_server.stop()
