"""The gateway's Redis feeds (key invalidations, fine-tuned model announcements) while Redis is
away: retried all along, and said once when lost and once when back, not at every retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
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
