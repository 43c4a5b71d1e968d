"""Active health checks: GET /health on every engine; an ejected one only once its back-off ends."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine, EngineRegistry


class HealthChecker:
    def __init__(self, registry: EngineRegistry, metrics: EngineMetrics, timeout_s: float) -> None:
        self.registry = registry
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def check_all(self, session: aiohttp.ClientSession) -> None:
        """One round over the engines the registry has now, concurrently."""
        engines = self.registry.engines()
        now = time.monotonic()
        due = [e for e in engines if e.health.probe_due(now)]
        await asyncio.gather(*(self.check(session, e) for e in due))
        self.metrics.publish(self.registry.engines())  # (those that left meanwhile: not theirs)
        self.metrics.publish_models(self.registry.configured_pools())

    async def check(self, session: aiohttp.ClientSession, engine: Engine) -> None:
        try:
            async with session.get(engine.url + "/health", timeout=self.timeout) as resp:
                status = resp.status
                await resp.read()
        except aiohttp.ClientConnectorError as exc:
            self._failed(engine, "connect", str(exc) or type(exc).__name__)
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "disconnect"
            self._failed(engine, "health", f"{kind}: {str(exc) or type(exc).__name__}")
            return
        if status != 200:
            self._failed(engine, "health", f"/health answered {status}")
            return
        engine.probe_ok(time.monotonic())

    def _failed(self, engine: Engine, kind: str, detail: str) -> None:
        self.metrics.check_failed(engine.url, "health", engine)
        engine.probe_failed("connect" if kind == "connect" else "health", detail, time.monotonic())
