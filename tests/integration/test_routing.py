"""Load signals and strategies against simulator engines: the scraper reads their /metrics, the
gateway (or the balancer, fed by the scraper) routes on what it read."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import create_app
from gateway.netutil import free_port
from gateway.routing.balancer import BLOCK_BYTES, PrefixAffinity, affinity_key, home
from gateway.routing.engines import Engine, EngineRegistry
from gateway.routing.load import LoadScraper
from gateway.settings import ModelRoute, Settings
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim, sim_state, wait_running
from tests.support.gateways import ADMIN_TOKEN
from tests.support.servers import serve_asgi

MODEL = "sim-model"
INTERVAL_S = 0.05


def settings(engines: list[str], strategy: str, spill_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "models": [{"name": MODEL, "engines": engines}],
            "routing": {"strategy": strategy, "scrape_interval_s": INTERVAL_S},
            "admin_token": ADMIN_TOKEN,
            "auth": {"required": False},
            "metering": {"spill_dir": str(spill_dir)},
        }
    )


def chat(system: str, *turns: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": turn} for turn in turns]
    return {"model": MODEL, "messages": messages, "max_tokens": 4, "stream": True, **extra}


async def complete(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> None:
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def until(check: Callable[[], bool], deadline_s: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def scraping(registry: EngineRegistry) -> AsyncIterator[LoadScraper]:
    scraper = LoadScraper(registry, INTERVAL_S)
    await scraper.start()
    try:
        yield scraper
    finally:
        await scraper.close()


async def test_the_scraper_follows_each_engines_queue_and_outlives_a_dead_one() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with (
        running_sim(SimConfig(models=[MODEL])) as busy,
        running_sim(SimConfig(models=[MODEL])) as idle,
        aiohttp.ClientSession() as http,
    ):
        registry = EngineRegistry([ModelRoute(name=MODEL, engines=[busy, idle, dead])])
        by_url = {e.url: e for e in registry.engines()}
        async with scraping(registry):
            held = [
                asyncio.create_task(complete(http, busy, chat("s", "q", sim={"hang": True})))
                for _ in range(2)
            ]
            await wait_running(http, busy, 2)
            await until(lambda: by_url[busy].load.running == 2)
            assert by_url[idle].load.scraped_at > 0
            assert by_url[idle].load.running == 0
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await until(lambda: by_url[busy].load.running == 0)
            await complete(http, idle, chat("s", "q"))
            await until(lambda: by_url[idle].load.prefix_queries > 0)  # the sim's counters
        assert by_url[dead].load.scraped_at == 0.0


async def test_least_loaded_avoids_an_engine_busy_with_requests_of_another_replica(
    tmp_path: Path,
) -> None:
    async with (
        running_sim(SimConfig(models=[MODEL])) as busy,
        running_sim(SimConfig(models=[MODEL])) as free,
        serve_asgi(create_app(settings([busy, free], "least_loaded", tmp_path))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        held = [
            asyncio.create_task(complete(http, busy, chat("s", "q", sim={"hang": True})))
            for _ in range(3)
        ]  # sent straight to the engine: only its /metrics shows them
        await wait_running(http, busy, 3)
        await asyncio.sleep(4 * INTERVAL_S)
        for _ in range(6):
            await complete(http, gateway, chat("s", "q"))
        assert (await sim_state(http, free))["total_requests"] == 6
        assert (await sim_state(http, busy))["total_requests"] == 3
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_least_loaded_sends_more_to_the_faster_engine(tmp_path: Path) -> None:
    async with (
        running_sim(SimConfig(models=[MODEL], ttft_ms=200, itl_ms=20)) as slow,
        running_sim(SimConfig(models=[MODEL], ttft_ms=5, itl_ms=1)) as fast,
        serve_asgi(create_app(settings([slow, fast], "least_loaded", tmp_path))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        queue = list(range(60))

        async def user() -> None:
            while queue:
                queue.pop()
                await complete(http, gateway, chat("s", "q"))

        await asyncio.gather(*(user() for _ in range(6)))
        served_slow = (await sim_state(http, slow))["total_requests"]
        served_fast = (await sim_state(http, fast))["total_requests"]
        assert served_slow + served_fast == 60
        assert served_fast >= 3 * served_slow, (served_fast, served_slow)


async def test_prefix_affinity_keeps_conversations_on_their_engine_within_the_bound() -> None:
    """Balancer level, with engines whose load the scraper reads from their /metrics (the API
    layer does not hand the proxy an affinity key yet). The eight conversations have four
    homes on each engine: eight drawn at random hash 6/2 or worse to the two engines (random
    ports) in 29% of runs, and a conversation stays on its home."""
    async with (
        running_sim(SimConfig(models=[MODEL], ttft_ms=30, itl_ms=5)) as one,
        running_sim(SimConfig(models=[MODEL], ttft_ms=30, itl_ms=5)) as two,
        aiohttp.ClientSession() as http,
    ):
        registry = EngineRegistry([ModelRoute(name=MODEL, engines=[one, two])])
        pool = registry.pool(MODEL)
        assert pool is not None
        homes: dict[str, list[str]] = {one: [], two: []}
        for i in range(200):
            system = f"System prompt {i}: " + "answer briefly and precisely. " * 40
            block = affinity_key("chat/completions", chat(system, "question 0"))[:BLOCK_BYTES]
            at_home = home(pool.engines, block)
            assert at_home is not None
            homes[at_home.url].append(system)
        systems = [s for pair in zip(homes[one][:4], homes[two][:4], strict=True) for s in pair]
        assert len(systems) == 8
        balancer = PrefixAffinity(load_bound=1.25)
        routed: list[tuple[int, str]] = []

        async def send(conversation: int, turns: list[str]) -> None:
            body = chat(systems[conversation], *turns)
            engine = balancer.candidates(pool, affinity_key("chat/completions", body))[0]
            engine.inflight += 1
            routed.append((conversation, engine.url))
            try:
                await complete(http, engine.url, body)
            finally:
                engine.inflight -= 1

        queue = list(range(len(systems)))

        async def user() -> None:
            while queue:
                conversation = queue.pop()
                for turn in range(4):
                    await send(conversation, [f"question {t}" for t in range(turn + 1)])

        async with scraping(registry):
            await asyncio.gather(*(user() for _ in range(4)))
        first = {c: url for c, url in reversed(routed)}  # each conversation's first engine
        stuck = sum(url == first[c] for c, url in routed)
        assert stuck >= 0.8 * len(routed), routed
        per_engine = Counter(url for _, url in routed)
        assert max(per_engine.values()) <= 1.25 * len(routed) / 2, per_engine
        served = [(await sim_state(http, url))["total_requests"] for url in (one, two)]
        assert served == [per_engine[one], per_engine[two]]


async def test_conversations_through_the_gateway_stay_on_their_engine(tmp_path: Path) -> None:
    systems = [f"System prompt {i}: " + "answer briefly and precisely. " * 40 for i in range(6)]
    async with (
        running_sim(SimConfig(models=[MODEL])) as one,
        running_sim(SimConfig(models=[MODEL])) as two,
        serve_asgi(create_app(settings([one, two], "prefix_affinity", tmp_path))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        served: dict[int, set[str]] = {c: set() for c in range(len(systems))}
        sent: dict[int, dict[str, Any]] = {}  # each conversation's first turn as its engine saw it
        for turn in range(3):  # the conversations take turns, one request at a time
            for conversation, system in enumerate(systems):
                before = (await sim_state(http, one))["total_requests"]
                body = chat(system, *(f"question {t}" for t in range(turn + 1)))
                await complete(http, gateway, body)
                after = (await sim_state(http, one))["total_requests"]
                served[conversation].add(engine := one if after > before else two)
                sent.setdefault(conversation, (await sim_state(http, engine))["last_request"])
        assert all(len(engines) == 1 for engines in served.values()), served
        # New prefixes, the engines idle: each went to its home (its first block, the tenant's
        # cache_salt first, hashed with each engine's URL), where any other process sends it.
        engines = [Engine(one), Engine(two)]
        for conversation, request in sent.items():
            key = affinity_key("chat/completions", request["body"])
            expected = home(engines, key[:BLOCK_BYTES])
            assert expected is not None
            assert served[conversation] == {expected.url}
