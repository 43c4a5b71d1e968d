"""A simulator engine and a gateway in front of it, on real sockets, shared by a test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.gateways import ADMIN_TOKEN, PEPPER, admin_request
from tests.support.servers import serve_asgi

MODEL = "sim-model"
DEAD_MODEL = "dead-model"


@dataclass(frozen=True, slots=True)
class Stack:
    gateway: str  # gateway base URL
    sim: str  # simulator base URL
    http: aiohttp.ClientSession

    async def sim_state(self) -> dict[str, Any]:
        return await sim_state(self.http, self.sim)


def gateway_settings(sim_url: str, spill_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "models": [
            {"name": MODEL, "engines": [sim_url]},
            {"name": DEAD_MODEL, "engines": [f"http://127.0.0.1:{free_port()}"]},
        ],
        "max_body_bytes": 64 * 1024,
        "request_policy": {"max_data_url_bytes": 32 * 1024},  # (within the body)
        "upstream": {"response_timeout_s": 1.5, "stream_idle_timeout_s": 1.5},
        "access_log": True,
        "admin_token": ADMIN_TOKEN,
        "auth": {"required": False},
        "metering": {"spill_dir": str(spill_dir)},  # never the default under the user's home
    }
    values.update(overrides)
    return Settings.model_validate(values)


OTHER = "other-model"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True, slots=True)
class AuthStack:
    gateway: str
    redis: Redis
    http: aiohttp.ClientSession
    settings: Settings  # the gateway's (another gateway on the same Redis and engine: changed)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await admin_request(self.http, self.gateway, method, path, body)

    async def new_key(self, **fields: Any) -> str:
        status, body = await self.admin("POST", "/keys", {"tenant": "acme", **fields})
        assert status == 201, body
        key: str = body["key"]
        return key

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)


def auth_settings(sim: str, redis_url: str, spill_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "models": [{"name": MODEL, "engines": [sim]}, {"name": OTHER, "engines": [sim]}],
            "redis_url": redis_url,
            "admin_token": ADMIN_TOKEN,
            "key_pepper": PEPPER,
            "access_log": True,
            "metering": {"spill_dir": str(spill_dir)},  # never the default under the user's home
        }
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def auth(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthStack]:
    spill_dir = tmp_path_factory.mktemp("auth-spill")
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL, OTHER])) as sim,
        serve_asgi(create_app(settings := auth_settings(sim, redis_url, spill_dir))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        redis = Redis.from_url(redis_url)
        try:
            yield AuthStack(gateway, redis, http, settings)
        finally:
            await redis.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    spill_dir = tmp_path_factory.mktemp("stack-spill")
    async with (
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
        serve_asgi(create_app(gateway_settings(sim, spill_dir))) as gw,
        aiohttp.ClientSession() as http,
    ):
        yield Stack(gw, sim, http)
