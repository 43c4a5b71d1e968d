"""Serving fine-tuned models: an adapter is loaded into an engine of its base model the first
time it is asked for there, and the registry learns it from that engine at once.

Engines list runtime-loaded adapters in /v1/models (with their base as `parent`), so once one is
loaded the usual machinery routes to it: learned pools, health, load balancing, metering and
limits as for any model. An engine that restarts forgets its adapters; the next models poll
drops it from the pool, and the next request loads the adapter again (on whichever engine of the
base model is up). A request that reaches such an engine before that poll, and is told the
model is not there, has it loaded there again and is sent once more (`load_on`). Loads of one
model are serialised in this process, so a burst of first requests loads it once. A trainer
announces each model it makes (`MODELS_CHANNEL`); every gateway loads it then, so the first
request finds it loaded.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import ModelNotFound, ServiceUnavailable, engine_unavailable
from gateway.files.store import FileStore
from gateway.finetune.engine_adapters import AdapterError, load_adapter, unload_adapter
from gateway.finetune.job_store import JobStore
from gateway.redis_feed import FEED_ANSWER_S, FEED_PING_S, ChannelFeed, follow
from gateway.routing.engines import Engine, EngineRegistry, ModelPool

Learn = Callable[[Engine], Awaitable[None]]  # poll one engine's /v1/models now
MODELS_CHANNEL = "llmaas:ft:models"  # {"tenant", "model"} of each fine-tuned model made
RETRY_S = 1.0
ENGINE_FAILURES = (AdapterError, aiohttp.ClientError, TimeoutError)  # an engine's call failed


async def announce(redis: Redis, tenant: str, model: str) -> None:
    """Tell every gateway that `tenant`'s `model` exists (they load it into an engine)."""
    await redis.publish(MODELS_CHANNEL, orjson.dumps({"tenant": tenant, "model": model}))


class AdapterServing:
    def __init__(
        self,
        registry: EngineRegistry,
        redis: Redis,
        http: aiohttp.ClientSession,
        learn: Learn,
        *,
        ping_s: float = FEED_PING_S,
        answer_s: float = FEED_ANSWER_S,
    ) -> None:
        """`ping_s`, `answer_s`: the announcements' feed's liveness check (redis_feed.py)."""
        self.registry = registry
        self.feed = ChannelFeed(redis, MODELS_CHANNEL, ping_s=ping_s, answer_s=answer_s)
        self.store = JobStore(redis)
        self.http = http
        self.learn = learn
        self.locks: dict[str, asyncio.Lock] = {}
        self.reloaded: dict[tuple[str, str], float] = {}  # (engine URL, model) → load_on's end
        self.preloads: set[asyncio.Task[None]] = set()
        self.log = logging.getLogger("llmaas.finetune")

    async def run(self) -> None:
        """Load each model a trainer announces, until cancelled (the app's lifespan owns it)."""
        await follow(
            self.feed,
            self._announced,
            name="fine-tuned model announcements",
            log=self.log,
            retry_s=RETRY_S,
        )

    def _announced(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        if message.get("type") == "message" and isinstance(data, bytes):
            announced = orjson.loads(data)
            task = asyncio.create_task(
                self._preload(str(announced["tenant"]), str(announced["model"]))
            )
            self.preloads.add(task)
            task.add_done_callback(self.preloads.discard)

    async def _preload(self, tenant: str, model: str) -> None:
        try:
            await self.pool(tenant, model)
        except ServiceUnavailable:  # no engine up now: the first request tries again
            pass
        except (RedisError, OSError) as exc:
            self.log.warning("preloading %s failed: %s", model, type(exc).__name__)

    async def record(self, tenant: str, model: str) -> dict[str, Any] | None:
        return await self.store.get_model(tenant, model)

    async def pool(self, tenant: str, model: str) -> ModelPool | None:
        """The pool serving `model` (one of `tenant`'s fine-tuned models), loading the adapter
        into an engine first if no engine that is up has it; None if the tenant has no such
        model. 503 when no engine of the base model can take it."""
        now = time.monotonic()
        pool = self.registry.pool(model)
        if pool is not None and any(e.is_up(now) for e in pool.engines):
            return pool
        record = await self.store.get_model(tenant, model)
        if record is None:
            return None
        lock = self.locks.setdefault(model, asyncio.Lock())
        async with lock:
            pool = self.registry.pool(model)
            if pool is not None and any(e.is_up(time.monotonic()) for e in pool.engines):
                return pool
            if not await self._load_somewhere(tenant, model, record):
                return None
            return self.registry.pool(model)

    async def _load_somewhere(self, tenant: str, model: str, record: dict[str, Any]) -> bool:
        """Load it into the least busy engine of its base model that can; False if the model
        was deleted meanwhile (and is not left loaded)."""
        base = self.registry.pool(record["base"])
        now = time.monotonic()
        engines = sorted(
            (e for e in (base.engines if base else []) if e.is_up(now)), key=lambda e: e.inflight
        )
        if not engines:  # none tried: not the adapter's fault (was "could not load it")
            raise engine_unavailable()
        failures = []
        for engine in engines:
            try:
                started = time.perf_counter()
                if not await self._load(engine, tenant, model, record):
                    return False
                self.log.info(
                    "loaded adapter %s on %s in %.0f ms",
                    model,
                    engine.url,
                    (time.perf_counter() - started) * 1000,
                )
                return True
            except ENGINE_FAILURES as exc:
                failures.append(f"{engine.url}: {exc}")
        self.log.warning("adapter %s could not be loaded: %s", model, "; ".join(failures))
        raise _unavailable(model, f"no engine of its base model '{record['base']}' could load it")

    async def load_on(self, tenant: str, model: str, engine: Engine) -> None:
        """Load `model` into `engine` again: it answered that it does not serve it (it
        restarted since the last models poll, which forgets runtime-loaded adapters). 404 if
        the model is gone, 503 if the engine cannot take it. A burst of requests refused alike
        loads it once: those refused before a load finished there are sent again after it."""
        refused = time.monotonic()
        try:
            record = await self.store.get_model(tenant, model)
        except RedisError as exc:
            raise _unavailable(model, "its record could not be read") from exc
        if record is None:
            raise ModelNotFound(model)
        async with self.locks.setdefault(model, asyncio.Lock()):
            if self.reloaded.get((engine.url, model), -1.0) > refused:
                return  # loaded there since this request was refused
            try:
                loaded = await self._load(engine, tenant, model, record)
            except ENGINE_FAILURES as exc:
                self.log.warning(
                    "adapter %s could not be loaded on %s again: %s", model, engine.url, exc
                )
                raise _unavailable(model, "its engine could not load it again") from exc  # (the
                # engine's address is the operator's: it is in the log line above)
            if not loaded:
                raise ModelNotFound(model)
            self.reloaded[engine.url, model] = time.monotonic()
        self.log.info(
            "loaded adapter %s on %s again (the engine had forgotten it)", model, engine.url
        )

    async def _load(self, engine: Engine, tenant: str, model: str, record: dict[str, Any]) -> bool:
        """The adapter loaded into `engine`, and the registry told at once. False when the
        model was deleted while it loaded (on any replica): that delete's unload may have
        reached the engine first, so it is unloaded again, not served until a restart."""
        await load_adapter(self.http, engine.url, model, record["adapter"])
        if await self.store.get_model(tenant, model) is None:
            try:
                await unload_adapter(self.http, engine.url, model)
            except ENGINE_FAILURES as exc:
                self.log.warning("unloading deleted %s from %s failed: %s", model, engine.url, exc)
            await self.learn(engine)
            return False
        await self.learn(engine)
        return True

    async def delete(self, tenant: str, model: str) -> bool:
        """Unload `model` everywhere, forget it and remove its adapter; False if unknown."""
        record = await self.store.get_model(tenant, model)
        if record is None:
            return False
        pool = self.registry.pool(model)
        base = self.registry.pool(record["base"])
        engines = {e.url: e for p in (pool, base) if p is not None for e in p.engines}
        await self.store.delete_model(tenant, model)  # no new load starts from here on
        self.reloaded = {at: end for at, end in self.reloaded.items() if at[1] != model}
        for engine in engines.values():
            try:
                await unload_adapter(self.http, engine.url, model)
            except ENGINE_FAILURES as exc:
                self.log.warning("unloading %s from %s failed: %s", model, engine.url, exc)
            await self.learn(engine)
        await asyncio.to_thread(shutil.rmtree, Path(record["adapter"]), True)
        await FileStore(self.store.redis).add_bytes(tenant, -int(record.get("bytes", 0)))
        return True


def _unavailable(model: str, why: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The model '{model}' cannot be served right now: {why}. Try again shortly.",
        code="model_unavailable",
        headers={"retry-after": "1"},
    )
