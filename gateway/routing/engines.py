"""The engine registry: which engines serve which model, and what the gateway knows of each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.settings import ModelRoute

# After a failed connection an engine is skipped for this long (unless every engine is down).
DOWN_FOR_S = 2.0


@dataclass(slots=True, eq=False)
class Engine:
    url: str
    inflight: int = 0
    down_until: float = 0.0
    # vLLM's system_fingerprint, learnt from its usage frames (metering asks for them, which
    # moves the fingerprint off the finish frames; it is put back for clients who did not).
    fingerprint: str | None = None

    def is_up(self, now: float) -> bool:
        return now >= self.down_until

    def mark_down(self) -> None:
        self.down_until = time.monotonic() + DOWN_FOR_S

    def mark_up(self) -> None:
        self.down_until = 0.0


@dataclass(slots=True)
class ModelPool:
    name: str
    engines: list[Engine] = field(default_factory=list)
    created: int = 0
    context_length: int | None = None


class EngineRegistry:
    """Model name → pool of engines. Engines shared by several models are one object."""

    def __init__(self, routes: list[ModelRoute]) -> None:
        created = int(time.time())
        by_url: dict[str, Engine] = {}
        self._pools: dict[str, ModelPool] = {}
        for route in routes:
            engines = [by_url.setdefault(url, Engine(url)) for url in route.engines]
            self._pools[route.name] = ModelPool(route.name, engines, created, route.context_length)
        self._engines = list(by_url.values())

    def pool(self, model: str) -> ModelPool | None:
        return self._pools.get(model)

    def pools(self) -> list[ModelPool]:
        return list(self._pools.values())

    def engines(self) -> list[Engine]:
        return list(self._engines)
