from __future__ import annotations

from gateway.routing.balancer import LeastLoaded, PrefixAffinity, RoundRobin, make_balancer
from gateway.routing.engines import EngineRegistry
from gateway.settings import ModelRoute, RoutingSettings


def _registry() -> EngineRegistry:
    return EngineRegistry(
        [
            ModelRoute(name="a", engines=["http://e1", "http://e2", "http://e3"]),
            ModelRoute(name="b", engines=["http://e1/"]),
        ]
    )


def test_engines_shared_by_models_are_one_object() -> None:
    reg = _registry()
    pool_a, pool_b = reg.pool("a"), reg.pool("b")
    assert pool_a is not None
    assert pool_b is not None
    assert pool_a.engines[0] is pool_b.engines[0]
    assert len(reg.engines()) == 3
    assert reg.pool("missing") is None


def test_round_robin_rotates_the_first_choice() -> None:
    pool = _registry().pool("a")
    assert pool is not None
    rr = RoundRobin()
    firsts = [rr.candidates(pool)[0].url for _ in range(6)]
    assert firsts == ["http://e1", "http://e2", "http://e3"] * 2


def test_down_engines_go_last() -> None:
    pool = _registry().pool("a")
    assert pool is not None
    pool.engines[0].mark_down()
    for _ in range(3):
        assert RoundRobin().candidates(pool)[-1].url == "http://e1"


def test_least_loaded_prefers_fewest_in_flight() -> None:
    pool = _registry().pool("a")
    assert pool is not None
    pool.engines[0].inflight, pool.engines[1].inflight, pool.engines[2].inflight = 5, 1, 3
    assert [e.url for e in LeastLoaded().candidates(pool)] == [
        "http://e2",
        "http://e3",
        "http://e1",
    ]


def test_make_balancer_follows_settings() -> None:
    assert isinstance(make_balancer(RoutingSettings(strategy="round_robin")), RoundRobin)
    assert isinstance(make_balancer(RoutingSettings(strategy="least_loaded")), LeastLoaded)
    balancer = make_balancer(RoutingSettings(load_bound=1.5))
    assert isinstance(balancer, PrefixAffinity)  # the default
    assert balancer.load_bound == 1.5
