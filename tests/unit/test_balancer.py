from __future__ import annotations

import time
from collections import Counter

from gateway.routing.balancer import (
    STALE_AFTER_S,
    LeastLoaded,
    PrefixAffinity,
    RoundRobin,
    engine_load,
    make_balancer,
)
from gateway.routing.engines import Engine, EngineLoad, EngineRegistry, ModelPool
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


def test_what_fails_over_from_each_engine_is_spread_over_the_others() -> None:
    pool = _registry().pool("a")
    assert pool is not None
    rr = RoundRobin()
    seconds = Counter((o[0].url, o[1].url) for o in (rr.candidates(pool) for _ in range(60)))
    for first in ("http://e1", "http://e2", "http://e3"):
        nexts = {second: n for (f, second), n in seconds.items() if f == first}
        assert nexts == {u: 10 for u in ("http://e1", "http://e2", "http://e3") if u != first}
    assert all(
        sorted(e.url for e in rr.candidates(pool)) == ["http://e1", "http://e2", "http://e3"]
        for _ in range(6)
    )


def test_down_engines_go_last() -> None:
    pool = _registry().pool("a")
    assert pool is not None
    pool.engines[0].mark_down()
    for _ in range(3):
        assert RoundRobin().candidates(pool)[-1].url == "http://e1"


def test_each_pool_takes_its_own_turns() -> None:
    """A steady mix of models (a client that embeds, then chats): with one turn for all
    pools every chat went to the same engine, under every strategy."""
    reg = EngineRegistry(
        [
            ModelRoute(name="chat", engines=["http://c1", "http://c2"]),
            ModelRoute(name="embed", engines=["http://m1", "http://m2"]),
        ]
    )
    chat, embed = reg.pool("chat"), reg.pool("embed")
    assert chat is not None
    assert embed is not None
    for strategy in (RoundRobin(), LeastLoaded(), PrefixAffinity()):
        firsts = []
        for _ in range(100):
            firsts.append(strategy.candidates(chat)[0].url)
            strategy.candidates(embed)
        assert Counter(firsts) == {"http://c1": 50, "http://c2": 50}, type(strategy).__name__


def test_an_ejected_engines_share_is_spread_over_the_others() -> None:
    """The turn goes round the engines that are up: the one after an ejected engine took its
    share too (200 of 300 against 100)."""
    pool = _registry().pool("a")
    assert pool is not None
    pool.engines[0].mark_down()
    for strategy in (RoundRobin(), LeastLoaded()):
        firsts = Counter(strategy.candidates(pool)[0].url for _ in range(300))
        assert firsts == {"http://e2": 150, "http://e3": 150}, type(strategy).__name__


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


def test_load_is_own_requests_now_plus_other_replicas_at_the_last_scrape() -> None:
    now = time.monotonic()
    engine = Engine("http://e1", inflight=3)
    assert engine_load(engine, now) == 3  # never scraped: only what this replica knows
    # Scraped when 4 were queued, 3 of them this replica's: one is another replica's.
    engine.load = EngineLoad(running=3, waiting=1, scraped_at=now, own_at_scrape=3)
    assert engine_load(engine, now) == 4
    engine.inflight = 1  # two of ours finished since: the stale queue does not keep them
    assert engine_load(engine, now) == 2
    engine.inflight = 6  # a burst of ours since: counted at once
    assert engine_load(engine, now) == 7
    # Ours sent but not yet queued there when it answered: nobody else's, not negative.
    engine.load = EngineLoad(running=1, scraped_at=now, own_at_scrape=3)
    assert engine_load(engine, now) == 6
    assert engine_load(engine, now + STALE_AFTER_S + 1) == 6  # a stale scrape is not believed
    engine.load = EngineLoad(running=9, scraped_at=now, own_at_scrape=3)
    assert engine_load(engine, now + STALE_AFTER_S + 1) == 6


def test_an_empty_pool_has_no_candidates_under_every_strategy() -> None:
    """A dns:// entry that resolves to nothing yet: no engine, not a crash (then 503)."""
    for strategy in ("round_robin", "least_loaded", "prefix_affinity"):
        balancer = make_balancer(RoutingSettings(strategy=strategy))
        assert balancer.candidates(ModelPool("m", []), b"some prompt" * 100) == []
