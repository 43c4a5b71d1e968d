"""Overload shedding: an engine whose waiting queue reached `routing.max_waiting_per_engine`
takes no new request, and a model none of whose engines is below it refuses requests with 503
and Retry-After rather than letting vLLM's waiting queue grow without limit.

The queue is the engine's scraped `vllm:num_requests_waiting` corrected by what this replica
did since the scrape (in the spirit of balancer.engine_load): requests it sent since then are
counted as waiting, requests of its own that finished freed a slot that a waiting one took.
Until the next scrape that is an upper bound, so a burst is shed rather than queued. A queue
that is not known (never scraped, or not refreshed for a while) does not shed: shedding is
about engines that say they are behind, not about engines that say nothing (ejection is).
Shedding never marks an engine down.
"""

from __future__ import annotations

import dataclasses
import math
import time

from prometheus_client import Counter

from gateway.errors import ServiceUnavailable
from gateway.routing.engines import Engine, ModelPool
from gateway.settings import RoutingSettings

# A scraped queue older than this is no longer believed (as balancer.STALE_AFTER_S).
STALE_AFTER_S = 10.0


class EnginesOverloaded(ServiceUnavailable):
    def __init__(self, model: str, retry_after_s: int) -> None:
        super().__init__(
            f"Every engine serving '{model}' has a full queue; try again in {retry_after_s}s.",
            code="engines_overloaded",
            headers={"retry-after": str(retry_after_s)},
        )


def waiting(engine: Engine, now: float) -> float | None:
    """The engine's waiting queue as this replica sees it now; None while not known."""
    load = engine.load
    if load.scraped_at <= 0.0 or now - load.scraped_at >= STALE_AFTER_S:
        return None
    return max(0.0, load.waiting + engine.inflight - load.own_at_scrape)


def retry_after_s(settings: RoutingSettings) -> int:
    """When to try again: a queue that drained shows at the next scrape."""
    return max(1, math.ceil(settings.scrape_interval_s))


class QueueBound:
    """The engines of a pool below the bound; refuses (and counts) when there are none."""

    __slots__ = ("max_waiting", "retry_after_s", "shed")

    def __init__(self, max_waiting: int, retry_after_s: int, shed: Counter) -> None:
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.shed = shed  # llmaas_requests_shed{model}

    def below(self, engines: list[Engine], now: float) -> list[Engine]:
        return below(engines, self.max_waiting, now)

    def admit(self, pool: ModelPool) -> ModelPool:
        return admit(pool, self.max_waiting, self.retry_after_s, self.shed)


def below(engines: list[Engine], max_waiting: int, now: float) -> list[Engine]:
    """`engines` without those at or over the bound, in their order (the same list when none
    is)."""
    over = [e for e in engines if (w := waiting(e, now)) is not None and w >= max_waiting]
    if not over:
        return engines
    return [e for e in engines if e not in over]


def admit(pool: ModelPool, max_waiting: int, retry_after: int, shed: Counter) -> ModelPool:
    """The pool with only the engines below the bound; EnginesOverloaded (counted in `shed`)
    when none is. An empty pool is passed on as it is (no engine at all is no overload)."""
    if not pool.engines:
        return pool
    now = time.monotonic()
    engines = below(pool.engines, max_waiting, now)
    if engines is pool.engines:
        return pool
    # Some engine that is up is full. Left with none that is up (an ejected engine answers no
    # scrape, so its queue is not known, not short): every engine that could take it is full.
    if not any(e.is_up(now) for e in engines):
        shed.labels(pool.name).inc()
        raise EnginesOverloaded(pool.name, retry_after)
    return dataclasses.replace(pool, engines=engines)


def queue_bound(settings: RoutingSettings, shed: Counter) -> QueueBound | None:
    """The bound the settings ask for; None when shedding is off."""
    if settings.max_waiting_per_engine is None:
        return None
    return QueueBound(settings.max_waiting_per_engine, retry_after_s(settings), shed)


def refuse_if_overloaded(pool: ModelPool, settings: RoutingSettings, shed: Counter) -> None:
    """Before admission: refuse a request no engine of its model could take without queueing
    past the bound, so it is neither charged to limits nor billed."""
    bound = settings.max_waiting_per_engine
    if bound is not None:
        admit(pool, bound, retry_after_s(settings), shed)
