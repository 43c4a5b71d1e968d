"""What the gateway's Redis watch tells the operator, against a real Redis: a maxmemory-policy
that may evict the gateway's keys (once per change, not every read), and a Redis that lost
its data while no request was settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.metering.ledger import LEDGER_ID, Ledger
from gateway.metrics import Metrics
from gateway.redis_memory import watch_redis_memory
from gateway.settings import MeteringSettings
from tests.support.logs import Collect, collected

NO_RETRY = Retry(NoBackoff(), 0)  # a failed read fails at once: the next one reconnects

pytestmark = pytest.mark.asyncio(loop_scope="session")

EVICTS = "Redis may evict the gateway's keys"
LOST = "Redis lost its data"


@contextlib.asynccontextmanager
async def watching(redis: Redis, metrics: Metrics, ledger: Ledger) -> AsyncIterator[None]:
    """The watch reading every 10 ms (30 s in the gateway): each change below meets many reads."""
    task = asyncio.create_task(watch_redis_memory(redis, metrics, ledger, interval_s=0.01))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.config_set("maxmemory-policy", "noeviction")


def starting(text: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.getMessage().startswith(text)


def count(logs: Collect, text: str) -> int:
    return len([r for r in logs.records if starting(text)(r)])


async def test_a_policy_that_may_evict_is_logged_once_per_change_and_gauged(
    redis: Redis,
) -> None:
    # volatile-lru (many managed Redis services' default) evicted usage records and totals,
    # allkeys-lru API keys too, and nothing said so. Once per change now, not every 30 s.
    metrics = Metrics()
    ledger = Ledger(redis, MeteringSettings(), window_s=60.0)
    with collected() as logs:
        async with watching(redis, metrics, ledger):
            await redis.config_set("maxmemory-policy", "volatile-lru")
            await logs.wait_for(starting(EVICTS))
            assert metrics.redis_may_evict._value.get() == 1.0
            await redis.config_set("maxmemory-policy", "allkeys-lru")
            await logs.wait_for(lambda r: "allkeys-lru" in str(getattr(r, "fields", "")))
            await redis.config_set("maxmemory-policy", "noeviction")
            async with asyncio.timeout(5):
                while metrics.redis_may_evict._value.get() != 0.0:  # noqa: ASYNC110 (a gauge)
                    await asyncio.sleep(0.01)
    policies = [r.fields["maxmemory_policy"] for r in logs.records if starting(EVICTS)(r)]  # type: ignore[attr-defined]
    assert policies == ["volatile-lru", "allkeys-lru"]
    assert all(r.levelno == logging.WARNING for r in logs.records if starting(EVICTS)(r))


async def test_a_redis_that_lost_its_data_is_logged_once_with_no_request_settled(
    redis: Redis,
) -> None:
    # Redis back empty: every key 401 (so nothing is settled, no write sees the loss), and the
    # operator got no line saying why. The watch puts the ledger's id back, and says so once.
    ledger = Ledger(redis, MeteringSettings(), window_s=60.0)
    known = await ledger.identity()
    with collected() as logs:
        async with watching(redis, Metrics(), ledger):
            await redis.flushall()
            await logs.wait_for(starting(LOST))
            assert await redis.get(LEDGER_ID) == known.encode()  # put back, for the spills
            await redis.config_set("maxmemory-policy", "volatile-lru")  # many reads later
            await logs.wait_for(starting(EVICTS))
    lost = [r for r in logs.records if starting(LOST)(r)]
    assert [r.levelno for r in lost] == [logging.WARNING]
    assert count(logs, EVICTS) == 1


async def test_a_redis_that_does_not_answer_is_gauged_down_and_up_again(redis: Redis) -> None:
    """Found by review 2026-12-07: no metric said whether Redis could be reached, so an outage
    while no request needed it raised no alert (LlmaasRedisUnreachable reads this)."""
    metrics = Metrics()
    # Nothing listens; no retries (redis-py's back-offs took ~4.5 s of the 5 s bound below).
    nothing = Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2, retry=NO_RETRY)
    for client, up in ((nothing, 0.0), (redis, 1.0)):
        task = asyncio.create_task(watch_redis_memory(client, metrics, interval_s=0.01))
        try:
            metrics.redis_up.set(1.0 - up)  # (the other value: the watch must set it)
            async with asyncio.timeout(5):
                while metrics.redis_up._value.get() != up:  # noqa: ASYNC110 (a gauge)
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await nothing.aclose()


@contextlib.asynccontextmanager
async def watched_as(redis: Redis, user: str, acl: dict[str, Any]) -> AsyncIterator[Metrics]:
    """The watch reading every 10 ms as ACL user `user` (made with `acl`, password "pw"), its
    gauges; the user is deleted after."""
    await redis.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], **acl)
    where = redis.connection_pool.connection_kwargs
    client = Redis(
        host=where["host"], port=where["port"], username=user, password="pw", retry=NO_RETRY
    )
    metrics = Metrics()
    metrics.redis_up.set(0.0)
    task = asyncio.create_task(watch_redis_memory(client, metrics, interval_s=0.01))
    try:
        yield metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.acl_deluser(user)
        await client.aclose()


async def gauged(metrics: Metrics, up: float) -> None:
    async with asyncio.timeout(5):
        while metrics.redis_up._value.get() != up:  # noqa: ASYNC110 (a gauge)
            await asyncio.sleep(0.01)


async def test_a_user_refused_info_is_gauged_up_and_told_once(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review 2026-12-07: a user whose ACL refuses INFO (`-@dangerous`, a common least
    privilege) set llmaas_redis_up to 0, so LlmaasRedisUnreachable fired with Redis serving,
    and no line said that Redis's memory and policy went unwatched."""
    refused = "Redis refuses INFO to the gateway's user"
    acl = {"channels": ["*"], "categories": ["+@all", "-@dangerous"]}
    with caplog.at_level(logging.INFO, logger="llmaas.redis"), collected() as logs:
        async with watched_as(redis, "no-info", acl) as metrics:
            await logs.wait_for(starting(refused))
            await gauged(metrics, 1.0)
            await asyncio.sleep(0.2)  # many reads refused: still one line
            await redis.acl_setuser("no-info", commands=["+info"])
            await logs.wait_for(starting("Redis allows INFO again"))
    assert count(logs, refused) == 1
    assert [r.levelno for r in logs.records if starting(refused)(r)] == [logging.WARNING]


async def test_credentials_refused_while_running_are_told_once(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review 2026-12-07: a user gone (or a password changed) while the gateway ran
    was gauged down with no line naming why (the log's last word was an outage's 'Connection
    refused'), and its requests failed silently."""
    denied = "Redis refuses the gateway's credentials"
    acl: dict[str, Any] = {"categories": ["+@all"]}
    with caplog.at_level(logging.INFO, logger="llmaas.redis"), collected() as logs:
        async with watched_as(redis, "leaving", acl) as metrics:
            await gauged(metrics, 1.0)
            await redis.acl_deluser("leaving")  # (its connections are closed with it)
            await logs.wait_for(starting(denied), timeout_s=30)
            assert metrics.redis_up._value.get() == 0.0
            await asyncio.sleep(0.2)  # many reads refused: still one line
            back: dict[str, Any] = {"passwords": ["+pw"], "keys": ["*"], "categories": ["+@all"]}
            await redis.acl_setuser("leaving", enabled=True, **back)
            await logs.wait_for(
                starting("Redis accepts the gateway's credentials again"), timeout_s=30
            )
    told = [r for r in logs.records if starting(denied)(r)]
    assert [r.levelno for r in told] == [logging.WARNING]
    assert "invalid username-password pair" in str(getattr(told[0], "fields", ""))  # (Redis's)
