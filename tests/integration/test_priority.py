"""A tenant's priority reaches the engine as vLLM's request `priority`; a client's own never
does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, auth_settings
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.cli import run_llmaas
from tests.support.gateways import ADMIN_TOKEN
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True, slots=True)
class Setup:
    gateway: str
    sim: str
    http: aiohttp.ClientSession


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        serve_asgi(create_app(auth_settings(sim, redis_url, tmp_path / "spill"))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        yield Setup(gateway, sim, http)


async def _key(setup: Setup, tenant: str) -> dict[str, str]:
    url = f"{setup.gateway}/admin/v1/keys"
    async with setup.http.post(url, json={"tenant": tenant}, headers=ADMIN) as resp:
        assert resp.status == 201
        return {"authorization": f"Bearer {(await resp.json())['key']}"}


async def _forwarded(
    setup: Setup, key: dict[str, str], body: dict[str, Any], route: str = "chat/completions"
) -> Any:
    """The body the engine received for `body` sent by the holder of `key`."""
    url = f"{setup.gateway}/v1/{route}"
    async with setup.http.post(url, json={"model": MODEL, **body}, headers=key) as resp:
        assert resp.status == 200, await resp.text()
    return (await sim_state(setup.http, setup.sim))["last_request"]["body"]


async def test_the_tenants_priority_replaces_the_clients(setup: Setup) -> None:
    # Set through the installed CLI, as an operator would.
    status, out, err = await run_llmaas(
        setup.gateway, "tenants", "set", "gold", "--priority", "-5", token=ADMIN_TOKEN
    )
    assert status == 0, err
    assert "-5" in out
    async with setup.http.get(f"{setup.gateway}/admin/v1/tenants/gold", headers=ADMIN) as resp:
        assert (await resp.json())["priority"] == -5
    gold, plain = await _key(setup, "gold"), await _key(setup, "plain")

    sent = await _forwarded(setup, gold, {"messages": HELLO, "priority": -1000, "top_k": 3})
    assert sent["priority"] == -5
    assert sent["top_k"] == 3  # everything else as the client sent it
    assert (await _forwarded(setup, gold, {"messages": HELLO}))["priority"] == -5

    # A tenant without a priority: the client's own is removed, not trusted.
    assert "priority" not in await _forwarded(setup, plain, {"messages": HELLO, "priority": -1000})

    # The Responses API follows the same policy.
    ask = {"input": "hi", "priority": -1000}
    assert (await _forwarded(setup, gold, ask, "responses"))["priority"] == -5
    assert "priority" not in await _forwarded(setup, plain, ask, "responses")


async def test_a_priority_that_is_not_an_integer_is_refused_by_name(setup: Setup) -> None:
    url = f"{setup.gateway}/admin/v1/tenants/t1"
    for bad in ("high", False):  # false was stored as priority 0
        async with setup.http.put(url, json={"priority": bad}, headers=ADMIN) as resp:
            assert resp.status == 400, bad
            error = (await resp.json())["error"]
            assert error["param"] == "priority", bad
