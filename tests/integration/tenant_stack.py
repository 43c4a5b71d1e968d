"""A gateway with keys on (real Redis, one simulator engine) and tenants' `openai` clients, for
the tenant-owned APIs (files, fine-tuning jobs): one tenant per test keeps tests apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth.api_keys import parse_key
from gateway.auth.authenticate import Authenticator
from gateway.embedded.redis_server import running_redis
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL, auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import admin_request
from tests.support.key_cache import request_until_cached
from tests.support.redis_control import RedisProxy, redis_proxy
from tests.support.servers import serve_asgi


@dataclass(slots=True)
class TenantStack:
    gateway: str
    root: Path  # the stack's own directory (files, spill)
    redis: Redis
    http: aiohttp.ClientSession
    auth: Authenticator  # the gateway's own, to see what its key cache holds
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)  # closed at the end
    proxy: RedisProxy | None = None  # between the gateway and Redis, if asked for

    async def key(self, tenant: str, **fields: Any) -> str:
        """A new API key of `tenant` (created through the admin API), with `fields` (limits)."""
        status, body = await admin_request(
            self.http, self.gateway, "POST", "/keys", {"tenant": tenant, **fields}
        )
        assert status == 201, body
        key: str = body["key"]
        return key

    def client(self, key: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    async def tenant(self, tenant: str) -> openai.AsyncOpenAI:
        """A client with a new key of `tenant`."""
        return self.client(await self.key(tenant))

    async def cache_key(self, client: openai.AsyncOpenAI, tenant: str) -> None:
        """List files until the client's key and its tenant are in the gateway's cache."""
        parsed = parse_key(client.api_key)
        assert parsed is not None
        await request_until_cached(self.auth, parsed[0], tenant, client.files.list)


@asynccontextmanager
async def tenant_stack(
    root: Path, *, proxied: bool = False, **settings: Any
) -> AsyncIterator[TenantStack]:
    """`settings` (top-level sections) on top of the keys-on defaults; files under `root`.
    `proxied`: the gateway reaches Redis through a RedisProxy (`stack.proxy`); tests do not."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        AsyncExitStack() as exits,
    ):
        proxy = None
        gateway_url = redis_url
        if proxied:
            port = urlsplit(redis_url).port
            assert port is not None
            proxy = await exits.enter_async_context(redis_proxy(port))
            gateway_url = proxy.url
        values = auth_settings(sim, gateway_url, root / "spill").model_dump()
        values.update(settings)
        app = create_app(Settings.model_validate(values))
        async with serve_asgi(app) as gateway, aiohttp.ClientSession() as http:
            redis = Redis.from_url(redis_url)
            stack = TenantStack(gateway, root, redis, http, app.state.gateway.auth, proxy=proxy)
            try:
                yield stack
            finally:
                for client in stack.clients:
                    await client.close()
                await stack.redis.aclose()
