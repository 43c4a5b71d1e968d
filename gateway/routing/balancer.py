"""Balancing strategies: the order in which a request tries the engines of its model's pool."""

from __future__ import annotations

import itertools
import time
from typing import Protocol

from gateway.routing.engines import Engine, ModelPool
from gateway.settings import RoutingSettings


class Balancer(Protocol):
    def candidates(self, pool: ModelPool) -> list[Engine]:
        """Engines to try, best first; engines marked down go last."""
        ...


def _healthy_first(engines: list[Engine]) -> list[Engine]:
    now = time.monotonic()
    up = [e for e in engines if e.is_up(now)]
    if len(up) == len(engines):
        return engines
    return up + [e for e in engines if not e.is_up(now)]


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def candidates(self, pool: ModelPool) -> list[Engine]:
        engines = pool.engines
        if len(engines) == 1:
            return engines
        start = next(self._counter) % len(engines)
        return _healthy_first(engines[start:] + engines[:start])


class LeastLoaded:
    """Fewest requests in flight from this replica; ties broken by rotation."""

    def __init__(self) -> None:
        self._rotate = RoundRobin()

    def candidates(self, pool: ModelPool) -> list[Engine]:
        rotated = self._rotate.candidates(pool)
        return _healthy_first(sorted(rotated, key=lambda e: e.inflight))


def make_balancer(settings: RoutingSettings) -> Balancer:
    if settings.strategy == "least_loaded":
        return LeastLoaded()
    return RoundRobin()
