"""Where stored Responses live: a tenant's response id → the engine that made it.

vLLM keeps a stored response (`store`, its default) in the memory of the engine that made it,
so whatever names the id later (`previous_response_id`, GET, cancel) must reach that engine.
The gateway notes the engine when the engine's answer names the id, under the tenant: a tenant
finds only its own ids, so it can never read, continue or delete another tenant's response.

With Redis: `llmaas:{t:<tenant>}:resp:<id>` holds JSON `[model, engine URL]` and expires
after `responses.ttl_s`. Without Redis (no `redis_url`): a bounded dict in this process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import orjson
from redis.asyncio import Redis

MAX_ID_CHARS = 256  # longer ids are never looked up (vLLM's are "resp_" + 32 hex digits)


@dataclass(frozen=True, slots=True)
class Home:
    model: str  # the model the response was made with
    engine: str  # the engine's base URL


class ResponseHomes(Protocol):
    async def remember(self, tenant: str, response_id: str, home: Home) -> None: ...

    async def find(self, tenant: str, response_id: str) -> Home | None: ...

    async def forget(self, tenant: str, response_id: str) -> bool:
        """True if the id was known (and is not any more)."""
        ...


def home_key(tenant: str, response_id: str) -> str:
    return f"llmaas:{{t:{tenant}}}:resp:{response_id}"


class RedisHomes:
    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)

    async def remember(self, tenant: str, response_id: str, home: Home) -> None:
        value = orjson.dumps([home.model, home.engine])
        await self.redis.set(home_key(tenant, response_id), value, px=self.ttl_ms)

    async def find(self, tenant: str, response_id: str) -> Home | None:
        if len(response_id) > MAX_ID_CHARS:
            return None
        raw = await self.redis.get(home_key(tenant, response_id))
        if raw is None:
            return None
        model, engine = orjson.loads(raw)
        return Home(str(model), str(engine))

    async def forget(self, tenant: str, response_id: str) -> bool:
        if len(response_id) > MAX_ID_CHARS:
            return False
        return bool(await self.redis.delete(home_key(tenant, response_id)))


class MemoryHomes:
    """The same in one process: at most `max_entries`, the oldest dropped first."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._homes: OrderedDict[tuple[str, str], tuple[float, Home]] = OrderedDict()

    async def remember(self, tenant: str, response_id: str, home: Home) -> None:
        key = (tenant, response_id)
        self._homes.pop(key, None)
        self._homes[key] = (time.monotonic() + self.ttl_s, home)
        while len(self._homes) > self.max_entries:
            self._homes.popitem(last=False)

    async def find(self, tenant: str, response_id: str) -> Home | None:
        found = self._homes.get((tenant, response_id))
        if found is None:
            return None
        expires, home = found
        if expires <= time.monotonic():
            del self._homes[(tenant, response_id)]
            return None
        return home

    async def forget(self, tenant: str, response_id: str) -> bool:
        return await self.find(tenant, response_id) is not None and bool(
            self._homes.pop((tenant, response_id), None)
        )
