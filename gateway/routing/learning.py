"""Learned models: every engine's GET /v1/models, polled, tells the registry what it serves."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine, EngineRegistry
from gateway.routing.model_cards import parse_model_list

MAX_BODY_BYTES = 4 * 1024 * 1024


class ModelLearner:
    """A failed poll keeps what the engine listed last; a bad answer is logged once and counted,
    and the first good one after it once."""

    def __init__(self, registry: EngineRegistry, metrics: EngineMetrics, timeout_s: float) -> None:
        self.registry = registry
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.log = logging.getLogger("llmaas.routing")
        self._failing: set[str] = set()

    async def poll_all(self, session: aiohttp.ClientSession) -> None:
        engines = self.registry.engines()
        await asyncio.gather(*(self.poll(session, engine) for engine in engines))

    async def poll(self, session: aiohttp.ClientSession, engine: Engine) -> None:
        try:
            async with session.get(engine.url + "/v1/models", timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"/v1/models answered {resp.status}")
                body = await _read_bounded(resp)
            served = parse_model_list(orjson.loads(body))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # JSONDecodeError too
            self.metrics.check_failed(engine.url, "models", engine)
            if engine.url not in self._failing:
                self._failing.add(engine.url)
                self.log.warning(
                    "models poll of %s failed (keeping what it listed last): %s",
                    engine.url,
                    str(exc) or type(exc).__name__,
                )
            return
        if engine.url in self._failing:
            self._failing.discard(engine.url)
            self.log.info("models poll of %s works again", engine.url)
        if self.registry.learn(engine, served):
            names = [m.id for m in served]
            self.log.info("models of %s: %s", engine.url, names)
            for pool in self.registry.pools():  # a config naming a model the engine lacks
                if engine in pool.engines and pool.name not in names:
                    self.log.warning(
                        "engine %s is configured for model %s but lists %s: requests for %s "
                        "sent there get its 404 (a typo in the config or in the engine's "
                        "--served-model-name?)",
                        engine.url,
                        pool.name,
                        names,
                        pool.name,
                    )


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ValueError("/v1/models answer is too large")
    return bytes(body)
