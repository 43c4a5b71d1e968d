"""A simulator engine and a gateway in front of it, on real sockets, shared by a test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio

from gateway.app import create_app
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim, sim_state
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


def gateway_settings(sim_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "models": [
            {"name": MODEL, "engines": [sim_url]},
            {"name": DEAD_MODEL, "engines": [f"http://127.0.0.1:{free_port()}"]},
        ],
        "max_body_bytes": 64 * 1024,
        "upstream": {"response_timeout_s": 1.5, "stream_idle_timeout_s": 1.5},
        "access_log": True,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack() -> AsyncIterator[Stack]:
    async with (
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
        serve_asgi(create_app(gateway_settings(sim))) as gw,
        aiohttp.ClientSession() as http,
    ):
        yield Stack(gw, sim, http)
