"""The registry's background work: DNS refresh, models poll, health checks; started and stopped
with the app.

Each runs in its own task on a fixed period, with its own small aiohttp session (probes never
queue behind requests for a pooled connection) and short timeouts. A round that raises
something unexpected is logged and the task goes on: an engine's bad answer never stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from gateway.routing.breaker import BreakerPolicy
from gateway.routing.discovery import Discovery, Resolver, SystemResolver
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine, EngineRegistry
from gateway.routing.health import HealthChecker
from gateway.routing.learning import ModelLearner
from gateway.settings import ModelRoute, RoutingSettings

STARTUP_TIMEOUT_S = 5.0  # the first round (resolve, learn, check) before the gateway serves
# An engine that keeps answering 404 for a model it lists (a config naming a model it lacks)
# is polled at most this often, however many requests it refuses.
RELEARN_EVERY_S = 1.0

Round = Callable[[], Awaitable[None]]


def build_registry(
    routes: list[ModelRoute], settings: RoutingSettings, metrics: EngineMetrics
) -> EngineRegistry:
    policy = BreakerPolicy(settings.eject_base_s, settings.eject_max_s, settings.failures_to_eject)
    return EngineRegistry(
        routes,
        learn_models=settings.learn_models,
        policy=policy,
        observer=metrics,
    )


class EngineMonitor:
    def __init__(
        self,
        registry: EngineRegistry,
        settings: RoutingSettings,
        engine_metrics: EngineMetrics,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        timeout = settings.health_timeout_s
        self.discovery = Discovery(registry, resolver or SystemResolver(), engine_metrics, timeout)
        self.learner = ModelLearner(registry, engine_metrics, timeout)
        self.health = HealthChecker(registry, engine_metrics, timeout)
        self.log = logging.getLogger("llmaas.routing")
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._relearning: dict[str, asyncio.Task[None]] = {}  # engine URL → its poll now

    async def start(self) -> None:
        """A first round of everything (bounded), then the periodic tasks."""
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=2)
        session = self._session = aiohttp.ClientSession(connector=connector)
        s = self.settings
        rounds: list[tuple[str, float, Round]] = [
            ("dns", s.dns_refresh_s, self.discovery.refresh),
            ("models", s.models_refresh_s, lambda: self.learner.poll_all(session)),
            ("health", s.health_interval_s, lambda: self.health.check_all(session)),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await self._guarded("dns", self.discovery.refresh)
                await asyncio.gather(*(self._guarded(name, r) for name, _, r in rounds[1:]))
        self._tasks = [
            asyncio.create_task(self._every(name, period, r), name=f"llmaas-engines-{name}")
            for name, period, r in rounds
        ]

    def relearn(self, engine: Engine) -> None:
        """Poll `engine`'s /v1/models now, not at the next round (it said it does not serve a
        model it listed): one poll per engine at a time, and at most every RELEARN_EVERY_S."""
        if self._session is None or engine.url in self._relearning:
            return
        task = asyncio.create_task(self._relearn(self._session, engine))
        self._relearning[engine.url] = task
        task.add_done_callback(lambda _: self._relearning.pop(engine.url, None))

    async def _relearn(self, session: aiohttp.ClientSession, engine: Engine) -> None:
        started = time.monotonic()
        await self._guarded("models", lambda: self.learner.poll(session, engine))
        await asyncio.sleep(max(0.0, RELEARN_EVERY_S - (time.monotonic() - started)))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._relearning.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _every(self, name: str, period_s: float, run: Round) -> None:
        while True:
            started = time.monotonic()
            await self._guarded(name, run)
            await asyncio.sleep(max(0.0, period_s - (time.monotonic() - started)))

    async def _guarded(self, name: str, run: Round) -> None:
        try:
            await run()
        except Exception:  # a bug or an answer nobody foresaw: log it, keep the task alive
            self.log.exception("engine %s round failed", name)
