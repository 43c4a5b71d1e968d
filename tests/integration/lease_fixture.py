"""A gateway with a short write deadline and a short lease ttl, limits in a real Redis, and
the simulator as a child process: for slow clients and lease renewal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.limits.renewals import Renewals
from gateway.metering.ledger import log_key
from gateway.metering.record import UsageRecord
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim_process, sim_state
from tests.support.gateways import ADMIN_TOKEN, PEPPER, admin_request
from tests.support.servers import serve_asgi

WRITE_TIMEOUT_S = 1.0
LEASE_TTL_S = 1.5


@dataclass(frozen=True, slots=True)
class LeaseStack:
    gateway: str
    sim: str
    redis: Redis
    http: aiohttp.ClientSession
    app: FastAPI

    async def new_key(self, tenant: str, **limits: int) -> str:
        status, body = await admin_request(
            self.http, self.gateway, "POST", "/keys", {"tenant": tenant, **limits}
        )
        assert status == 201, body
        key: str = body["key"]
        return key

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)

    async def sim_state(self) -> dict[str, Any]:
        return await sim_state(self.http, self.sim)

    async def records(self, tenant: str) -> list[UsageRecord]:
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]", await self.redis.xrange(log_key(tenant))
        )
        return [UsageRecord.from_fields(fields) for _, fields in entries]

    @property
    def renewals(self) -> Renewals:
        renewals = self.app.state.gateway.admission.renewals
        assert isinstance(renewals, Renewals)
        return renewals


@pytest_asyncio.fixture(name="leases", scope="module", loop_scope="session")
async def lease_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LeaseStack]:
    spill_dir = tmp_path_factory.mktemp("lease-spill")
    config = SimConfig(models=[MODEL], max_model_len=1_000_000, kv_cache_tokens=10_000_000)
    async with running_redis(None) as redis_url, running_sim_process(config) as sim:
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "redis_url": redis_url,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "upstream": {"write_timeout_s": WRITE_TIMEOUT_S},
                "limits": {"lease_ttl_s": LEASE_TTL_S},
                "metering": {"spill_dir": str(spill_dir)},
            }
        )
        app = create_app(settings)
        async with serve_asgi(app) as gateway, aiohttp.ClientSession() as http:
            redis = Redis.from_url(redis_url)
            try:
                yield LeaseStack(gateway, sim, redis, http, app)
            finally:
                await redis.aclose()
