"""The engine registry: which engines serve which model, and what the gateway knows of each."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.routing.breaker import Breaker, BreakerPolicy, FailureKind
from gateway.routing.entries import DnsEntry, EngineEntry, StaticEntry, parse_entry
from gateway.routing.model_cards import ServedModel
from gateway.settings import ModelRoute

RECENT_ERRORS = 10  # kept per engine for `llmaas engines`


@dataclass(slots=True)
class EngineLoad:
    """What the engine's own /metrics said when last scraped (gateway/routing/load.py)."""

    running: float = 0.0  # vllm:num_requests_running
    waiting: float = 0.0  # vllm:num_requests_waiting
    kv_usage: float = 0.0  # vllm:kv_cache_usage_perc, 0..1
    prefix_hits: float = 0.0  # vllm:prefix_cache_hits (a counter)
    prefix_queries: float = 0.0  # vllm:prefix_cache_queries (a counter)
    scraped_at: float = 0.0  # time.monotonic() of the scrape; 0: never scraped
    # This replica's requests in flight there when the scrape's answer came: the rest of the
    # engine's queue is other replicas' (gateway/routing/balancer.py, engine_load).
    own_at_scrape: int = 0


@dataclass(frozen=True, slots=True)
class EngineError:
    at: float  # time.time()
    kind: str
    detail: str = ""


class EngineObserver(Protocol):
    """Hears an engine's health change and its requests in flight (metrics); and when an
    engine leaves the registry."""

    def ejected(self, engine: Engine) -> None: ...

    def returned(self, engine: Engine) -> None: ...

    def removed(self, engine: Engine) -> None: ...

    def inflight(self, engine: Engine) -> None:
        """Its count of requests in flight changed (Engine.sent, Engine.done)."""
        ...


@dataclass(slots=True, eq=False, weakref_slot=True)
class Engine:
    url: str
    inflight: int = 0  # requests this replica has sent to it and not yet finished
    load: EngineLoad = field(default_factory=EngineLoad)
    health: Breaker = field(default_factory=Breaker)
    source: str = ""  # the config entry it came from: its URL, or dns://name:port
    served: tuple[ServedModel, ...] = ()  # its /v1/models when last polled
    errors: deque[EngineError] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    observer: EngineObserver | None = None
    # prefix_affinity's memory of the prompt blocks sent here (LRU): it goes with the engine
    # when it leaves the registry (a pod gone from DNS), as a dict keyed by URL never did.
    prefix_blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def sent(self) -> None:
        """A request is on its way to it: counted from when it is chosen (a burst spreads at
        once), not when its answer begins (a stream's first token)."""
        self.inflight += 1
        if self.observer is not None:
            self.observer.inflight(self)

    def done(self) -> None:
        """A request sent to it is done with (answered, failed, or given up on)."""
        self.inflight -= 1
        if self.observer is not None:
            self.observer.inflight(self)

    def is_up(self, now: float) -> bool:
        """Not ejected. An ejected engine comes back only once its /health answers 200."""
        return self.health.is_up()

    def lists(self, model: str) -> bool:
        """Whether it serves `model` as far as its /v1/models said; one not polled yet (or
        listing nothing) is taken at the config's word. (One configured for a model it does
        not list answers that model's every request 404.)"""
        return not self.served or any(card.id == model for card in self.served)

    def mark_down(self) -> None:
        """The proxy could not connect to it: a failure that ejects at once."""
        self.record_failure("connect")

    def mark_up(self) -> None:
        """The proxy reached it: consecutive failures start again from zero."""
        self.health.success()

    def record_failure(self, kind: FailureKind, detail: str = "") -> bool:
        """A failure was observed (see breaker.FailureKind); True when it ejected the engine."""
        self.errors.append(EngineError(time.time(), kind, detail))
        ejected = self.health.failure(kind, time.monotonic())
        if ejected and self.observer is not None:
            self.observer.ejected(self)
        return ejected

    def probe_ok(self, now: float) -> None:
        if self.health.probe_ok(now) and self.observer is not None:
            self.observer.returned(self)

    def probe_failed(self, kind: FailureKind, detail: str, now: float) -> None:
        self.errors.append(EngineError(time.time(), kind, detail))
        if self.health.probe_failed(kind, now) and self.observer is not None:
            self.observer.ejected(self)


@dataclass(slots=True)
class ModelPool:
    name: str
    engines: list[Engine] = field(default_factory=list)
    created: int = 0
    context_length: int | None = None
    parent: str | None = None  # a learned LoRA adapter: the base model it applies to


class EngineRegistry:
    """Model name → pool of engines. Engines shared by several models are one object.

    Pools come from the config (static URLs, and the addresses `dns://` entries resolve to,
    set by discovery) and, with `learn_models`, from what engines list in /v1/models: a model
    not in the config is routed to every engine that lists it. A configured model keeps its
    configured engines only. Pools are updated by assigning new lists, never in place, so a
    request holding a pool's list keeps a consistent one; an engine that leaves finishes the
    requests it has.
    """

    def __init__(
        self,
        routes: Sequence[ModelRoute],
        *,
        learn_models: bool = True,
        policy: BreakerPolicy | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        self._created = int(time.time())
        self._learn = learn_models
        self._policy = policy or BreakerPolicy()
        self.observer = observer
        self._routes = [(r, [parse_entry(e) for e in r.engines]) for r in routes]
        self._members: dict[EngineEntry, tuple[str, ...]] = {}
        for _, entries in self._routes:
            for entry in entries:
                self._members[entry] = (entry.url,) if isinstance(entry, StaticEntry) else ()
        self._by_url: dict[str, Engine] = {}
        self._pools: dict[str, ModelPool] = {}
        self._first_seen: dict[str, int] = {}
        self._rebuild()

    def pool(self, model: str) -> ModelPool | None:
        return self._pools.get(model)

    def pools(self) -> list[ModelPool]:
        return list(self._pools.values())

    def configured_pools(self) -> list[ModelPool]:
        """The pools of the models the config names: each has one, empty or not (learned
        models come and go with the engines that list them)."""
        return [self._pools[name] for name in dict.fromkeys(r.name for r, _ in self._routes)]

    def engines(self) -> list[Engine]:
        return list(self._by_url.values())

    def dns_entries(self) -> list[DnsEntry]:
        return [e for e in self._members if isinstance(e, DnsEntry)]

    def set_members(self, entry: DnsEntry, urls: Sequence[str]) -> bool:
        """The engines a dns:// entry resolves to now; True when that changed the pools."""
        members = tuple(dict.fromkeys(urls))
        if self._members.get(entry) == members:
            return False
        self._members[entry] = members
        self._rebuild()
        return True

    def learn(self, engine: Engine, served: tuple[ServedModel, ...]) -> bool:
        """What `engine` lists in /v1/models now; True when that changed the pools."""
        if engine.served == served:
            return False
        engine.served = served
        if self._by_url.get(engine.url) is engine:
            self._rebuild()
        return True

    def models_of(self, engine: Engine) -> list[str]:
        """The model names routed to `engine`."""
        return [p.name for p in self._pools.values() if engine in p.engines]

    def _rebuild(self) -> None:
        engines, routed = self._configured()
        configured = {route.name: route.context_length for route, _ in self._routes}
        if self._learn:
            for engine in engines.values():
                for card in engine.served:
                    if card.id not in configured:
                        routed.setdefault(card.id, []).append(engine)
        gone = [e for url, e in self._by_url.items() if url not in engines]
        self._by_url = engines
        self._pools = {name: self._pool(name, pool, configured) for name, pool in routed.items()}
        for engine in gone:
            if self.observer is not None:
                self.observer.removed(engine)

    def _configured(self) -> tuple[dict[str, Engine], dict[str, list[Engine]]]:
        """Engines by URL (existing objects kept) and the configured pools, from the entries."""
        engines: dict[str, Engine] = {}
        routed: dict[str, list[Engine]] = {}
        for route, entries in self._routes:
            pool = routed.setdefault(route.name, [])
            for entry in entries:
                for url in self._members[entry]:
                    engine = engines.get(url) or self._by_url.get(url) or self._new(url, entry)
                    engines[url] = engine
                    if engine not in pool:
                        pool.append(engine)
        return engines, routed

    def _new(self, url: str, entry: EngineEntry) -> Engine:
        source = entry.url if isinstance(entry, StaticEntry) else entry.text
        return Engine(url, health=Breaker(self._policy), source=source, observer=self.observer)

    def _pool(
        self, name: str, engines: list[Engine], configured: dict[str, int | None]
    ) -> ModelPool:
        pool = self._pools.get(name)
        if pool is None:
            learned_at = self._first_seen.setdefault(name, int(time.time()))
            pool = ModelPool(name, created=self._created if name in configured else learned_at)
        pool.engines = engines
        pool.context_length = configured.get(name) or _learned_context(name, engines)
        parents = (c.parent for e in engines for c in e.served if c.id == name and c.parent)
        pool.parent = None if name in configured else next(parents, None)
        return pool


def _learned_context(name: str, engines: list[Engine]) -> int | None:
    """The smallest max_model_len the engines report for `name` (an adapter: its base's)."""
    lengths = []
    for engine in engines:
        cards = {card.id: card for card in engine.served}
        card = cards.get(name)
        if card is not None and card.max_model_len is None and card.parent in cards:
            card = cards[card.parent]
        if card is not None and card.max_model_len is not None:
            lengths.append(card.max_model_len)
    return min(lengths, default=None)
