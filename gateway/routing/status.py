"""What operators see of each engine (GET /admin/v1/engines, `llmaas engines`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from gateway.routing.balancer import is_fresh
from gateway.routing.engines import Engine, EngineRegistry


def engines_status(registry: EngineRegistry) -> list[dict[str, Any]]:
    clock = _Clock()
    return [engine_status(registry, engine, clock) for engine in registry.engines()]


def engine_status(registry: EngineRegistry, engine: Engine, clock: _Clock) -> dict[str, Any]:
    health, load = engine.health, engine.load
    adapters = {m.id: m.parent for m in engine.served if m.is_adapter}
    routed = registry.models_of(engine)
    return {
        "url": engine.url,
        "source": engine.source,
        "state": _state(engine, clock.mono),
        "ejected_until": clock.wall(health.until) if health.ejected else None,
        "consecutive_failures": health.consecutive_failures,
        "ejections": health.ejections,
        "inflight": engine.inflight,
        "models": [name for name in routed if name not in adapters],
        "adapters": [{"id": name, "parent": adapters[name]} for name in routed if name in adapters],
        "served": [m.id for m in engine.served],  # its /v1/models when last polled
        "load": {
            "running": load.running,
            "waiting": load.waiting,
            "kv_usage": load.kv_usage,
            "prefix_hits": load.prefix_hits,
            "prefix_queries": load.prefix_queries,
            "scraped_at": clock.wall(load.scraped_at) if load.scraped_at else None,
            # Whether routing still trusts it (balancer.STALE_AFTER_S): an engine whose
            # /metrics stopped answering keeps its last figures, which then mean nothing.
            "fresh": is_fresh(load, clock.mono),
        },
        "recent_errors": [
            {"at": _rfc3339(e.at), "kind": e.kind, "detail": e.detail} for e in engine.errors
        ],
    }


def _state(engine: Engine, now: float) -> str:
    """up; ejected (backing off); probing (back-off over, waiting for /health to answer 200)."""
    if engine.health.is_up():
        return "up"
    return "ejected" if now < engine.health.until else "probing"


class _Clock:
    """Monotonic times (what the registry keeps) shown as wall-clock RFC 3339."""

    def __init__(self) -> None:
        self.mono, self.now = time.monotonic(), time.time()

    def wall(self, monotonic: float) -> str:
        return _rfc3339(self.now + (monotonic - self.mono))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
