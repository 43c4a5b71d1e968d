"""Four gateway processes, one Redis, one key with rpm 100: exactly 100 of 1,000 get through."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, ADMIN_TOKEN, MODEL, PEPPER
from tests.integration.sim_fixture import running_sim_process
from tests.integration.test_revocation import gateway_process

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_rpm_is_exact_across_four_gateway_processes(tmp_path: Path) -> None:
    async with (
        running_redis(None) as redis_url,
        running_sim_process(SimConfig(models=[MODEL])) as sim,
        AsyncExitStack() as stack,
    ):
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"redis_url: {redis_url}\nadmin_token: {ADMIN_TOKEN}\nkey_pepper: {PEPPER}\n"
            f"access_log: false\nmodels:\n  - name: {MODEL}\n    engines: [{sim}]\n"
        )
        gateways = [await stack.enter_async_context(gateway_process(config)) for _ in range(4)]
        connector = aiohttp.TCPConnector(limit=400)
        http = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        async with http.post(
            f"{gateways[0]}/admin/v1/keys", json={"tenant": "x", "rpm": 100}, headers=ADMIN
        ) as resp:
            key = (await resp.json())["key"]
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

        async def one(i: int) -> tuple[int, str | None]:
            url = f"{gateways[i % 4]}/v1/chat/completions"
            async with http.post(url, json=body, headers=headers) as resp:
                await resp.read()
                return resp.status, resp.headers.get("retry-after")

        results = await asyncio.gather(*(one(i) for i in range(1000)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 100, 429: 900}
    assert all(retry is not None and int(retry) >= 1 for status, retry in results if status == 429)
