"""Releasing admissions given up on: retried until Redis takes them, bounded while it does not."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.limits.limiter import Limiter, scope_keys
from gateway.limits.releases import Releases
from gateway.metrics import Metrics
from gateway.netutil import free_port
from gateway.redis_client import redis_client
from tests.support.redis_control import redis_proxy

pytestmark = pytest.mark.asyncio(loop_scope="session")
CALLER = Principal("releases", "k", "api_key", key_limits=Limits(rpm=5, max_concurrency=5))


def released(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "llmaas_ratelimit_releases_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_a_release_is_retried_until_redis_takes_it(redis: Redis) -> None:
    (rpm, _, leases), _ = scope_keys(CALLER.tenant, CALLER.key_id)
    admission = await Limiter(redis).admit(CALLER, 10)  # ran, but its client was told 503
    port = redis.connection_pool.connection_kwargs["port"]
    async with redis_proxy(port) as proxy:
        through = redis_client(proxy.url, 0.2, 4)
        metrics = Metrics()
        releases = Releases(Limiter(through), metrics, horizon_s=60)
        proxy.set_mode("refuse")
        releases.add(CALLER, admission.lease)
        await asyncio.sleep(0.3)
        assert (await redis.zcard(rpm), await redis.zcard(leases)) == (1, 1)  # still charged
        proxy.set_mode("pass")
        await releases.close(grace_s=5)
        await through.aclose()
    assert (await redis.zcard(rpm), await redis.zcard(leases)) == (0, 0)
    assert released(metrics, "refunded") == 1


async def test_without_redis_releases_are_bounded_and_give_up_in_time() -> None:
    unreachable = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.2, 4)
    metrics = Metrics()
    releases = Releases(Limiter(unreachable), metrics, horizon_s=0.2, max_pending=2)
    for lease in ("a", "b", "c"):
        releases.add(CALLER, lease)
    assert released(metrics, "dropped") == 1  # the queue holds two
    await releases.close(grace_s=2)  # both are past their horizon well before that
    await unreachable.aclose()
    assert released(metrics, "expired") == 2


async def test_what_redis_did_not_take_by_closing_is_handed_back() -> None:
    """The gateway settles those leases through the ledger (spilled while Redis is away)."""
    unreachable = redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.2, 4)
    releases = Releases(Limiter(unreachable), Metrics(), horizon_s=60)
    for lease in ("a", "b"):
        releases.add(CALLER, lease)
    left = await releases.close(grace_s=0.3)
    await unreachable.aclose()
    assert left == [(CALLER, "a"), (CALLER, "b")]
    assert await releases.close() == []  # handed back once


class _CountingLimiter:
    """Takes every release, a moment after it is asked; notes how many were asked at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.done: list[str] = []

    async def release(self, caller: Principal, lease: str) -> str:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        self.done.append(lease)
        return "refunded"


async def test_releases_queued_during_an_outage_go_together_once_redis_takes_them() -> None:
    """Sent one round trip each, 300 leases left by an outage held their slots while new
    admissions counted them: a key far under its max_concurrency got 429s for ~0.3 s."""
    limiter = _CountingLimiter()
    releases = Releases(limiter, Metrics(), horizon_s=60)  # type: ignore[arg-type]
    leases = [f"lease-{i}" for i in range(300)]
    for lease in leases:
        releases.add(CALLER, lease)
    assert await releases.close(grace_s=10) == []
    assert sorted(limiter.done) == sorted(leases)  # each once
    assert limiter.most > 1  # not one after the other
