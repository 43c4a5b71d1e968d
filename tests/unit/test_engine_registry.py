"""The registry's pools: configured, resolved from DNS, learned from the engines' /v1/models."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.metrics import Metrics
from gateway.routing.discovery import Discovery, SystemResolver
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine, EngineRegistry
from gateway.routing.entries import DnsEntry
from gateway.routing.model_cards import ServedModel
from gateway.settings import ModelRoute
from tests.support.logs import collected

DNS = DnsEntry("engines.test", 8000)


def _urls(registry: EngineRegistry, model: str) -> list[str]:
    pool = registry.pool(model)
    assert pool is not None
    return [e.url for e in pool.engines]


def test_dns_addresses_join_and_leave_the_pool_and_kept_engines_stay_the_same_object() -> None:
    reg = EngineRegistry([ModelRoute(name="m", engines=["http://static:1", DNS.text])])
    assert _urls(reg, "m") == ["http://static:1"]
    assert reg.set_members(DNS, ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
    assert _urls(reg, "m") == ["http://static:1", "http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    kept = reg.engines()[2]
    old_list = reg.pool("m").engines  # type: ignore[union-attr]
    assert reg.set_members(DNS, ["http://10.0.0.2:8000", "http://10.0.0.3:8000"])
    assert _urls(reg, "m") == ["http://static:1", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]
    assert reg.engines()[1] is kept
    assert [e.url for e in old_list][1] == "http://10.0.0.1:8000"  # a request's list is intact
    assert not reg.set_members(DNS, ["http://10.0.0.2:8000", "http://10.0.0.3:8000"])
    assert reg.engines()[1].source == DNS.text


def test_a_learned_model_routes_to_the_engines_that_list_it() -> None:
    reg = EngineRegistry(
        [
            ModelRoute(name="base", engines=["http://a", "http://b"]),
            ModelRoute(name="x", engines=["http://c"]),
        ]
    )
    a, b, c = reg.engines()
    reg.learn(a, (ServedModel("base", None, 4096), ServedModel("lora-1", "base")))
    reg.learn(c, (ServedModel("x"), ServedModel("base", None, 2048)))
    assert [p.name for p in reg.pools()] == ["base", "x", "lora-1"]
    assert _urls(reg, "lora-1") == ["http://a"]
    assert _urls(reg, "base") == ["http://a", "http://b"]  # configured pools stay as configured
    lora = reg.pool("lora-1")
    assert lora is not None
    assert (lora.parent, lora.context_length) == ("base", 4096)  # an adapter: its base's length
    assert reg.pool("base").context_length == 4096  # type: ignore[union-attr]
    assert reg.models_of(a) == ["base", "lora-1"]
    reg.learn(a, (ServedModel("base", None, 4096),))  # the adapter was unloaded
    assert reg.pool("lora-1") is None
    assert reg.pool("base") is not None
    assert b.served == ()


def test_configured_context_length_wins_and_learning_can_be_off() -> None:
    reg = EngineRegistry(
        [ModelRoute(name="m", engines=["http://a"], context_length=1000)], learn_models=False
    )
    (a,) = reg.engines()
    reg.learn(a, (ServedModel("m", None, 4096), ServedModel("extra")))
    assert reg.pool("m").context_length == 1000  # type: ignore[union-attr]
    assert reg.pool("extra") is None


class _Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def ejected(self, engine: Engine) -> None:
        self.events.append(("ejected", engine.url))

    def returned(self, engine: Engine) -> None:
        self.events.append(("returned", engine.url))

    def removed(self, engine: Engine) -> None:
        self.events.append(("removed", engine.url))

    def inflight(self, engine: Engine) -> None:
        self.events.append(("inflight", engine.url))


def test_the_observer_hears_ejections_returns_and_removals() -> None:
    observer = _Observer()
    reg = EngineRegistry([ModelRoute(name="m", engines=[DNS.text])], observer=observer)
    reg.set_members(DNS, ["http://10.0.0.1:8000"])
    (engine,) = reg.engines()
    engine.mark_down()
    engine.mark_down()  # already ejected: heard once
    assert not engine.is_up(0.0)
    engine.probe_ok(engine.health.until)
    assert engine.is_up(0.0)
    reg.set_members(DNS, [])
    assert observer.events == [
        ("ejected", "http://10.0.0.1:8000"),
        ("returned", "http://10.0.0.1:8000"),
        ("removed", "http://10.0.0.1:8000"),
    ]
    assert [e.kind for e in engine.errors] == ["connect", "connect"]
    assert reg.pool("m").engines == []  # type: ignore[union-attr]


class _FlakyResolver:
    def __init__(self) -> None:
        self.answer: list[str] | OSError = ["10.0.0.1", "fd00::1"]

    async def resolve(self, host: str) -> list[str]:
        assert host == "engines.test"
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


async def test_a_failed_resolution_keeps_the_last_engines_and_counts_it() -> None:
    metrics = Metrics()
    reg = EngineRegistry([ModelRoute(name="m", engines=[DNS.text])])
    resolver = _FlakyResolver()
    discovery = Discovery(reg, resolver, EngineMetrics(metrics), timeout_s=1.0)
    await discovery.refresh()
    assert _urls(reg, "m") == ["http://10.0.0.1:8000", "http://[fd00::1]:8000"]
    resolver.answer = OSError("temporary failure in name resolution")
    await discovery.refresh()
    assert _urls(reg, "m") == ["http://10.0.0.1:8000", "http://[fd00::1]:8000"]
    assert (
        b'llmaas_engine_check_failures_total{check="dns",engine="dns://engines.test:8000"} 1.0'
        in (metrics.render())
    )
    resolver.answer = []
    await discovery.refresh()
    assert _urls(reg, "m") == []


async def test_a_name_that_resolves_to_nothing_is_logged_once_until_it_has_addresses() -> None:
    """Found 2026-12-06: a dns:// name that resolved to no address (a typo) was silent: the
    pool was empty from the start, so it never changed, and its requests were only 503s."""
    reg = EngineRegistry([ModelRoute(name="m", engines=[DNS.text])])
    resolver = _FlakyResolver()
    resolver.answer = []
    discovery = Discovery(reg, resolver, EngineMetrics(Metrics()), timeout_s=1.0)
    said = "dns://engines.test:8000 resolves to no address: its pool has no engines"
    with collected("llmaas.routing") as logs:
        await discovery.refresh()
        await discovery.refresh()
        resolver.answer = ["10.0.0.1"]
        await discovery.refresh()
        resolver.answer = []
        await discovery.refresh()
    warned = [r.getMessage() for r in logs.records if r.levelname == "WARNING"]
    assert warned == [said, said], warned  # once per time it became empty


async def test_the_system_resolver_answers_for_localhost() -> None:
    addresses = await SystemResolver().resolve("localhost")
    assert "127.0.0.1" in addresses or "::1" in addresses


@pytest.mark.parametrize(
    ("code", "answer"),
    [(socket.EAI_NONAME, []), (socket.EAI_NODATA, []), (socket.EAI_AGAIN, None)],
)
async def test_a_name_without_addresses_is_an_answer_and_a_failed_lookup_is_not(
    monkeypatch: pytest.MonkeyPatch, code: int, answer: list[str] | None
) -> None:
    """NXDOMAIN or no records (a headless Service scaled to zero) empties the pool; a lookup
    that failed (EAI_AGAIN: no server answered) says nothing, and the last engines stay."""
    loop = asyncio.get_running_loop()

    async def getaddrinfo(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(code, "from the resolver")

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    if answer is None:
        with pytest.raises(socket.gaierror):
            await SystemResolver().resolve("engines.test")
    else:
        assert await SystemResolver().resolve("engines.test") == answer
