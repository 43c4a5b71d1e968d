"""Real vLLM CPU engines with the bundled models, started once per session, one after the other,
and a gateway in front of them."""

from __future__ import annotations

import asyncio
import re
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
from gateway.auth.issue import issue_key
from gateway.auth.store import AuthStore
from gateway.embedded.engine import EngineSpec, running_engine
from gateway.embedded.paths import (
    CHAT_MODEL_NAME,
    CHAT_TOOL_PARSER,
    EMBEDDING_MODEL_NAME,
    EmbeddedPaths,
)
from gateway.embedded.prepare import Prepared, prepare
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port
from gateway.settings import Settings
from tests.e2e.metering import LedgerView
from tests.support.servers import serve_asgi

CHAT = CHAT_MODEL_NAME
EMBED = EMBEDDING_MODEL_NAME
PEPPER = "e2e-pepper-0123456789abcdef"
# A tool the bundled model calls (vLLM parses its calls with CHAT_TOOL_PARSER).
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True, slots=True)
class Engines:
    chat: str
    embed: str


@dataclass(frozen=True, slots=True)
class E2E:
    gateway: str
    engines: Engines
    http: aiohttp.ClientSession
    key: str
    redis_url: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    async def running(self) -> float:
        """vLLM's own gauge of requests running on the chat engine."""
        async with self.http.get(f"{self.engines.chat}/metrics") as resp:
            text = await resp.text()
        match = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
        assert match, "vllm:num_requests_running missing from the engine's /metrics"
        return float(match.group(1))

    async def wait_running(self, expected: float, deadline_s: float = 20.0) -> None:
        """Until vLLM's running gauge reads `expected` (asserted at the deadline)."""
        for _ in range(int(deadline_s / 0.1)):
            if await self.running() == expected:
                return
            await asyncio.sleep(0.1)
        assert await self.running() == expected


def chat_engine(ready: Prepared, log: Path) -> EngineSpec:
    """The bundled chat model as the e2e tests run it, on a free port, logging to `log` (in the
    test's temporary directory, never under the home)."""
    return EngineSpec(
        ready.engine_python,
        ready.chat_model,
        CHAT,
        free_port(),
        log,
        tool_parser=CHAT_TOOL_PARSER,
        max_loras=4,  # fine-tuned models' adapters are loaded at runtime (test_fine_tuning_e2e)
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engines(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engines]:
    logs = tmp_path_factory.mktemp("engine-logs")
    ready = await prepare(EmbeddedPaths.resolve())
    chat = chat_engine(ready, logs / "chat.log")
    embed = EngineSpec(
        ready.engine_python,
        ready.embedding_model,
        EMBED,
        free_port(),
        logs / "embed.log",
        pooling=True,
    )
    async with running_engine(chat) as chat_url, running_engine(embed) as embed_url:
        yield Engines(chat_url, embed_url)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def e2e(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[E2E]:
    """The gateway with authentication on (real Redis); requests carry a key of tenant e2e."""
    spill_dir = tmp_path_factory.mktemp("usage-spill")
    async with running_redis(None) as redis_url:
        settings = Settings.model_validate(
            {
                "models": [
                    {"name": CHAT, "engines": [engines.chat]},
                    {"name": EMBED, "engines": [engines.embed]},
                ],
                "redis_url": redis_url,
                "admin_token": "e2e-admin-token-0123456789",
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(spill_dir)},
            }
        )
        redis = Redis.from_url(redis_url)
        try:
            _, key, _ = await issue_key(AuthStore(redis), PEPPER.encode(), tenant="e2e")
        finally:
            await redis.aclose()
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            yield E2E(gateway, engines, http, key, redis_url)


@pytest.fixture
async def ledger(e2e: E2E) -> AsyncIterator[LedgerView]:
    redis = Redis.from_url(e2e.redis_url)
    try:
        yield LedgerView(redis)
    finally:
        await redis.aclose()


@pytest.fixture
async def oai(e2e: E2E) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, with the e2e tenant's key, against the gateway."""
    async with openai.AsyncOpenAI(
        base_url=f"{e2e.gateway}/v1", api_key=e2e.key, max_retries=0
    ) as client:
        yield client
