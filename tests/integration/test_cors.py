"""CORS through real HTTP to real gateway processes: what a browser sends (a preflight, then
the request with its Origin) and what it needs back to let a web page read the answer. The
gateway used to answer a preflight 405 and no request with Access-Control-Allow-Origin, so
no page could call it (vLLM's server and OpenAI's API both allow every origin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import OPS, gateway_process, shared_config, tenant_key

pytestmark = pytest.mark.asyncio(loop_scope="session")

PAGE = "https://chat.example.com"
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-stainless-retry-count",
}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True)
class Stack:
    http: aiohttp.ClientSession
    root: Path
    redis_url: str
    sim: str

    def config(self, name: str, cors: str | None) -> Path:
        extra = "" if cors is None else f"cors: {cors}\n"
        path = self.root / f"{name}.yaml"
        return shared_config(path, redis_url=self.redis_url, model=MODEL, sim=self.sim, extra=extra)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Stack(http, tmp_path_factory.mktemp("cors"), redis_url, sim)


async def test_by_default_any_page_may_call_the_api(stack: Stack) -> None:
    async with gateway_process(stack.config("default", None)) as gw:
        url = f"{gw.url}/v1/chat/completions"
        async with stack.http.options(url, headers=PREFLIGHT) as resp:  # no key: none is sent
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            # (PUT and PATCH: the admin API's tenant and key updates; found by review)
            assert resp.headers["Access-Control-Allow-Methods"] == (
                "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            )
            assert resp.headers["Access-Control-Allow-Headers"] == (
                "authorization,content-type,x-stainless-retry-count"  # "*" would not cover
            )  # Authorization: named
            assert resp.headers["Access-Control-Max-Age"] == "600"
            assert "Access-Control-Allow-Credentials" not in resp.headers
            assert resp.headers["x-request-id"]
        key = await tenant_key(stack.http, gw.url, "web")
        async with stack.http.post(url, json=CHAT, headers={**key, "Origin": PAGE}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert resp.headers["Access-Control-Expose-Headers"] == "*"  # x-request-id, ...
        async with stack.http.post(url, json=CHAT, headers={"Origin": PAGE}) as resp:
            assert resp.status == 401  # the page may read why, too
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async with stack.http.post(url, json=CHAT, headers=key) as resp:
            assert resp.status == 200  # not from a page: nothing to add
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with stack.http.get(f"{gw.url}/metrics", headers=OPS) as resp:
            text = await resp.text()
        assert 'route="chat/completions",status="401"' in text
        assert 'status="204"' not in text  # a preflight is no request to the route it names


async def test_only_the_listed_origins_when_there_is_a_list(stack: Stack) -> None:
    config = stack.config("listed", f"{{allow_origins: ['{PAGE.upper()}'], max_age_s: 60}}")
    async with gateway_process(config) as gw:
        url = f"{gw.url}/v1/chat/completions"
        async with stack.http.options(url, headers=PREFLIGHT) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == PAGE  # (as browsers write it)
            assert resp.headers["Vary"] == "Origin"
            assert resp.headers["Access-Control-Max-Age"] == "60"
        other = {**PREFLIGHT, "Origin": "https://evil.example.net"}
        async with stack.http.options(url, headers=other) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
            assert error["code"] == "origin_not_allowed"
            assert "https://evil.example.net" in error["message"]
            assert "cors.allow_origins" in error["message"]
            assert "Access-Control-Allow-Origin" not in resp.headers
        key = await tenant_key(stack.http, gw.url, "web")
        headers = {**key, "Origin": "https://evil.example.net"}
        async with stack.http.post(url, json=CHAT, headers=headers) as resp:
            assert resp.status == 200  # served (it is the browser that keeps it from the page)
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert resp.headers["Vary"] == "Origin"


async def test_an_empty_list_turns_cors_off(stack: Stack) -> None:
    async with gateway_process(stack.config("off", "{allow_origins: []}")) as gw:
        url = f"{gw.url}/v1/chat/completions"
        async with stack.http.options(url, headers=PREFLIGHT) as resp:
            assert resp.status == 405
            assert "Access-Control-Allow-Origin" not in resp.headers
