"""/metrics, /readyz and /openapi.json on the public port: without a token they name no engine
and no tenant; with the admin or the metrics token the scrape and the detail are there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import DEAD_MODEL, MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import ADMIN_TOKEN, OPS, PEPPER, tenant_key
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

METRICS_TOKEN = "scraper-token-0123456789abcdef"
TENANT = "tenant-ops-leak-check"


@dataclass(frozen=True, slots=True)
class Ops:
    gateway: str
    secrets: tuple[str, ...]  # what must not show without a token: engine hosts, the tenant
    http: aiohttp.ClientSession


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ops(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ops]:
    """A gateway with keys on, one engine up and one down, after a tenant's request and a
    request to the dead engine (so both show in the metric labels)."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=4)) as sim,
    ):
        settings = Settings.model_validate(
            {
                "models": [
                    {"name": MODEL, "engines": [sim]},
                    {"name": DEAD_MODEL, "engines": [dead]},
                ],
                "redis_url": redis_url,
                "admin_token": ADMIN_TOKEN,
                "metrics_token": METRICS_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(tmp_path_factory.mktemp("ops-spill"))},
            }
        )
        async with (
            serve_asgi(create_app(settings)) as gateway,
            aiohttp.ClientSession() as http,
        ):
            key = await tenant_key(http, gateway, TENANT)
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            for model in (MODEL, DEAD_MODEL):
                url = f"{gateway}/v1/chat/completions"
                async with http.post(url, json={**chat, "model": model}, headers=key) as resp:
                    await resp.read()
            hosts = tuple(u.removeprefix("http://") for u in (sim, dead))
            yield Ops(gateway, (*hosts, TENANT), http)


async def fetch(ops: Ops, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with ops.http.get(f"{ops.gateway}{path}", headers=headers) as resp:
        return resp.status, await resp.text()


async def test_a_token_holder_sees_engines_and_tenants(ops: Ops) -> None:
    """The other tests' "absent" means something: the secrets are there to leak."""
    scraper = {"authorization": f"Bearer {METRICS_TOKEN}"}
    for headers in (OPS, scraper):
        status, metrics = await fetch(ops, "/metrics", headers)
        assert status == 200
        assert all(s in metrics for s in ops.secrets), ops.secrets
        status, ready = await fetch(ops, "/readyz", headers)
        assert status == 200
        assert all(s in ready for s in ops.secrets[:2])
        assert all(part in ready for part in ('"status":"ready"', '"models"', '"redis":"ok"'))


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789", f"Basic {ADMIN_TOKEN}", f"Bearer {PEPPER}"],
)
async def test_without_a_token_nothing_names_an_engine_or_a_tenant(
    ops: Ops, authorization: str | None
) -> None:
    headers = None if authorization is None else {"authorization": authorization}
    status, metrics = await fetch(ops, "/metrics", headers)
    assert status == 401
    assert '"type":"invalid_request_error"' in metrics
    assert not [s for s in ("wrong-token", PEPPER) if s in metrics]  # never echoed
    status, ready = await fetch(ops, "/readyz", headers)
    assert (status, ready) == (200, '{"status":"ready"}')
    status, openapi = await fetch(ops, "/openapi.json", headers)
    assert (status, '"openapi"' in openapi) == (200, True)
    for body in (metrics, ready, openapi):
        assert not [s for s in ops.secrets if s in body]
        assert "127.0.0.1" not in body
