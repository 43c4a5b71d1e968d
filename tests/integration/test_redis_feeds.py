"""The gateway's Redis feeds (key invalidations, fine-tuned model announcements) while Redis is
away: retried all along, and said once when lost and once when back, not at every retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth.cache import AuthCache
from gateway.auth.invalidation import InvalidationListener
from gateway.auth.store import CHANNEL
from gateway.embedded.redis_server import running_redis
from gateway.finetune.serving import AdapterServing
from gateway.redis_client import redis_client
from gateway.routing.engines import Engine, EngineRegistry
from gateway.sim.config import SimConfig
from tests.integration.conftest import auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.logs import Collect, collected
from tests.support.redis_control import redis_proxy
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

FEEDS = {
    "auth invalidation feed": "llmaas.auth",
    "fine-tuned model announcements": "llmaas.finetune",
}


def said(logs: Collect, start: str) -> int:
    return sum(1 for r in logs.records if r.getMessage().startswith(start))


def back(feed: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.getMessage() == f"{feed} back"


def lost(feed: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.getMessage().startswith(f"{feed} lost")


async def test_a_lost_feed_is_logged_once_and_its_return_once(tmp_path: Path) -> None:
    """Redis away for 2.5 s logged 'auth invalidation feed lost' at every retry (every 0.5 s)
    and the announcements' loss every second: 3 lines a second per worker, none when back."""
    async with (
        running_sim(SimConfig()) as sim,
        running_redis(None) as redis_url,
        redis_proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as proxy,
    ):
        with collected("llmaas.auth") as auth_logs, collected("llmaas.finetune") as ft_logs:
            logs = {"llmaas.auth": auth_logs, "llmaas.finetune": ft_logs}
            settings = auth_settings(sim, proxy.url, tmp_path / "spill")
            async with serve_asgi(create_app(settings)):
                await asyncio.sleep(0.5)  # both feeds subscribed
                proxy.set_mode("refuse")  # connections cut, new ones refused
                await asyncio.sleep(2.5)  # 5 retries of the one, 2 of the other
                proxy.set_mode("pass")
                for feed, logger in FEEDS.items():
                    await logs[logger].wait_for(back(feed))
            counts = {
                feed: (said(logs[logger], f"{feed} lost"), said(logs[logger], f"{feed} back"))
                for feed, logger in FEEDS.items()
            }
            assert counts == dict.fromkeys(FEEDS, (1, 1))


async def test_a_feed_whose_connection_went_silent_subscribes_again() -> None:
    """A Redis gone without closing the connection (a pod replaced, a path cut: no FIN, no RST)
    left both feeds blocked on a socket that would never speak, for ever and without a word:
    a key revoked afterwards stayed cached until its TTL. A quiet feed now PINGs; unanswered,
    it is lost (said once), subscribed again on a new connection, and back (said once)."""
    async with (
        running_redis(None) as redis_url,
        redis_proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as proxy,
        aiohttp.ClientSession() as http,
    ):
        through = redis_client(proxy.url, 0.5, 8)
        direct = Redis.from_url(redis_url)
        cache = AuthCache(ttl_s=3600)
        listener = InvalidationListener(through, cache, ping_s=0.3, answer_s=0.3)

        async def learn(_: Engine) -> None:
            return None

        serving = AdapterServing(EngineRegistry([]), through, http, learn, ping_s=0.3, answer_s=0.3)
        with collected("llmaas.auth") as auth_logs, collected("llmaas.finetune") as ft_logs:
            logs = {"llmaas.auth": auth_logs, "llmaas.finetune": ft_logs}
            tasks = [asyncio.create_task(listener.run()), asyncio.create_task(serving.run())]
            try:
                await asyncio.wait_for(listener.subscribed.wait(), 5)
                proxy.set_mode("stall")  # both connections open, silent for ever
                for feed, logger in FEEDS.items():
                    await logs[logger].wait_for(lost(feed))
                assert not listener.subscribed.is_set()
                proxy.set_mode("pass")  # new connections work; the stalled ones stay stalled
                for feed, logger in FEEDS.items():
                    await logs[logger].wait_for(back(feed))
                await asyncio.wait_for(listener.subscribed.wait(), 5)
                cache.keys.put("k1", None)
                await direct.publish(CHANNEL, "key:k1")  # a revocation, from another gateway
                async with asyncio.timeout(5):
                    while cache.keys.get("k1")[0]:  # noqa: ASYNC110 (the cache has no event)
                        await asyncio.sleep(0.02)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await through.aclose()
                await direct.aclose()
            counts = {
                feed: (said(logs[logger], f"{feed} lost"), said(logs[logger], f"{feed} back"))
                for feed, logger in FEEDS.items()
            }
            assert counts == dict.fromkeys(FEEDS, (1, 1))


async def test_a_feed_retrying_while_redis_is_away_gives_its_connections_back() -> None:
    """Each attempt to subscribe while Redis refused took a connection from the pool and kept
    it: on a pool of 2, the third attempt waited for a connection that never came back, and the
    feed never returned. Every failed attempt now gives its connection back."""
    async with (
        running_redis(None) as redis_url,
        redis_proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as proxy,
    ):
        through = redis_client(proxy.url, 0.5, 2)
        listener = InvalidationListener(through, AuthCache(ttl_s=3600))
        with collected("llmaas.auth") as logs:
            task = asyncio.create_task(listener.run())
            try:
                await asyncio.wait_for(listener.subscribed.wait(), 5)
                proxy.set_mode("refuse")
                await logs.wait_for(lost("auth invalidation feed"))
                await asyncio.sleep(2.5)  # 5 attempts at least
                proxy.set_mode("pass")
                await logs.wait_for(back("auth invalidation feed"))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await through.aclose()
