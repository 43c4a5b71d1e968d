"""The queue bound's candidate filter: which engines may take a request, and when none may."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.routing.balancer import Shedding, make_balancer
from gateway.routing.engines import Engine, EngineLoad, ModelPool
from gateway.routing.overload import (
    STALE_AFTER_S,
    EnginesOverloaded,
    QueueBound,
    queue_bound,
    refuse_if_overloaded,
    retry_after_s,
    waiting,
)
from gateway.settings import RoutingSettings
from gateway.settings_load import ConfigError, load_settings

MODEL = "m"


def shed_counter() -> Counter:
    return Counter("shed", "requests shed", ["model"], registry=CollectorRegistry())


def shed_count(counter: Counter) -> float:
    return float(counter.labels(MODEL)._value.get())


def engine(url: str, queued: float, *, own_at_scrape: int = 0, age_s: float = 0.0) -> Engine:
    scraped_at = time.monotonic() - age_s
    return Engine(
        url, load=EngineLoad(waiting=queued, scraped_at=scraped_at, own_at_scrape=own_at_scrape)
    )


def test_waiting_is_the_scraped_queue_corrected_by_own_requests_since() -> None:
    now = time.monotonic()
    e = engine("http://e", 3, own_at_scrape=2)
    assert waiting(e, now) == 1  # two of ours finished since: two waiting ones took their slots
    e.inflight = 6
    assert waiting(e, now) == 7  # four sent since the scrape: counted as queued
    e.inflight = 0
    e.load.waiting = 1
    assert waiting(e, now) == 0  # never negative


def test_an_unknown_queue_is_not_believed() -> None:
    now = time.monotonic()
    assert waiting(Engine("http://never-scraped"), now) is None
    assert waiting(engine("http://stale", 50, age_s=STALE_AFTER_S + 1), now) is None


def test_engines_at_or_over_the_bound_are_no_candidates() -> None:
    a, b, c = engine("http://a", 4), engine("http://b", 3), engine("http://c", 5)
    bound = QueueBound(4, 1, shed_counter())
    assert bound.below([a, b, c], time.monotonic()) == [b]
    engines = [b, Engine("http://unscraped")]
    assert bound.below(engines, time.monotonic()) is engines  # nothing over: the same list


def test_a_pool_with_one_engine_below_the_bound_keeps_that_one() -> None:
    pool = ModelPool(MODEL, [engine("http://a", 9), engine("http://b", 0)], created=7)
    admitted = QueueBound(2, 1, shed_counter()).admit(pool)
    assert [e.url for e in admitted.engines] == ["http://b"]
    assert (admitted.name, admitted.created) == (MODEL, 7)
    assert [e.url for e in pool.engines] == ["http://a", "http://b"]  # the registry's untouched


def test_a_pool_with_every_engine_over_the_bound_is_refused_and_counted() -> None:
    counter = shed_counter()
    a, b = engine("http://a", 2), engine("http://b", 0)
    b.inflight = 2  # sent since its scrape: its queue is 2 as far as this replica knows
    pool = ModelPool(MODEL, [a, b])
    with pytest.raises(EnginesOverloaded) as info:
        QueueBound(2, 3, counter).admit(pool)
    err = info.value
    assert err.status_code == 503
    assert err.code == "engines_overloaded"
    assert err.headers == {"retry-after": "3"}
    assert shed_count(counter) == 1
    assert [a.health.ejected, b.health.ejected] == [False, False]  # shedding marks none down


def test_full_engines_and_ejected_ones_are_an_overload() -> None:
    """An ejected engine answers no scrape, so its queue is not known: that is not room. With
    every engine that is up over the bound, the request is shed, not sent to a down engine
    (after its limits were charged) to fail there."""
    full, down = engine("http://full", 300), engine("http://down", 0, age_s=STALE_AFTER_S + 1)
    down.mark_down()
    counter = shed_counter()
    pool = ModelPool(MODEL, [full, down])
    with pytest.raises(EnginesOverloaded):
        refuse_if_overloaded(pool, RoutingSettings(max_waiting_per_engine=256), counter)
    assert shed_count(counter) == 1
    everything_down = ModelPool(MODEL, [down])  # no engine up: unavailable, not overloaded
    refuse_if_overloaded(everything_down, RoutingSettings(max_waiting_per_engine=256), counter)


def test_an_empty_pool_is_not_an_overload() -> None:
    pool = ModelPool(MODEL, [])
    assert QueueBound(0, 1, shed_counter()).admit(pool) is pool


def test_retry_after_is_the_scrape_interval_and_at_least_a_second() -> None:
    assert retry_after_s(RoutingSettings(scrape_interval_s=0.05)) == 1
    assert retry_after_s(RoutingSettings(scrape_interval_s=2.5)) == 3


def test_no_bound_no_shedding() -> None:
    settings = RoutingSettings(max_waiting_per_engine=None)
    assert queue_bound(settings, shed_counter()) is None
    assert not isinstance(make_balancer(settings, shed_counter()), Shedding)
    assert not isinstance(make_balancer(RoutingSettings()), Shedding)  # no counter: none either
    pool = ModelPool(MODEL, [engine("http://a", 10_000)])
    refuse_if_overloaded(pool, settings, shed_counter())  # does not raise


def test_refused_before_admission_when_every_engine_is_over() -> None:
    counter = shed_counter()
    settings = RoutingSettings(max_waiting_per_engine=1, scrape_interval_s=1.0)
    with pytest.raises(EnginesOverloaded):
        refuse_if_overloaded(ModelPool(MODEL, [engine("http://a", 1)]), settings, counter)
    refuse_if_overloaded(ModelPool(MODEL, [engine("http://a", 0)]), settings, counter)
    assert shed_count(counter) == 1


def test_the_strategy_chooses_among_engines_below_the_bound_only() -> None:
    settings = RoutingSettings(strategy="round_robin", max_waiting_per_engine=4)
    balancer = make_balancer(settings, shed_counter())
    assert isinstance(balancer, Shedding)
    busy, a, b = engine("http://busy", 4), engine("http://a", 1), engine("http://b", 0)
    pool = ModelPool(MODEL, [busy, a, b])
    firsts = {balancer.candidates(pool)[0].url for _ in range(6)}
    assert firsts == {"http://a", "http://b"}  # round robin over the two below the bound
    assert all("http://busy" not in [e.url for e in balancer.candidates(pool)] for _ in range(3))
    b.load.waiting = 9
    assert [e.url for e in balancer.candidates(pool)] == ["http://a"]
    a.load.waiting = 4
    with pytest.raises(EnginesOverloaded):
        balancer.candidates(pool)
    busy.load.waiting = 0  # its queue drained (the next scrape says so): it is taken again
    assert [e.url for e in balancer.candidates(pool)] == ["http://busy"]


def test_a_bound_of_zero_is_refused_at_load_naming_the_field() -> None:
    """0 was taken, then every request was refused with 'Every engine serving … has a full
    queue' while every queue was empty (waiting >= 0 always holds); null turns shedding off."""
    with pytest.raises(ConfigError) as refused:
        load_settings(None, dev_mode=True, routing={"max_waiting_per_engine": 0})
    assert str(refused.value) == (
        "settings: routing.max_waiting_per_engine: Input should be greater than or equal to 1"
    )
