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
    """Takes every release; notes how many calls (round trips) they took."""

    def __init__(self) -> None:
        self.calls = 0
        self.done: list[str] = []

    async def release(self, caller: Principal, lease: str) -> str:
        self.calls += 1
        self.done.append(lease)
        return "refunded"

    async def release_many(self, leases: list[tuple[Principal, str]]) -> list[str]:
        self.calls += 1
        self.done += [lease for _, lease in leases]
        return ["refunded"] * len(leases)


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
    assert limiter.calls <= 4  # one alone, then up to 256 at once, twice (not 300 round trips)


async def test_a_batch_of_releases_is_one_pipeline_on_one_connection(redis: Redis) -> None:
    """Sent as concurrent calls, a batch opened a connection per release (124 descriptors
    left open after the soak's load stopped)."""
    limiter = Limiter(redis)
    admissions = [await limiter.admit(CALLER, 10) for _ in range(3)]
    outcomes = await limiter.release_many([(CALLER, a.lease) for a in admissions])
    assert outcomes == ["refunded"] * 3
    (rpm, _, leases), _ = scope_keys(CALLER.tenant, CALLER.key_id)
    assert (await redis.zcard(rpm), await redis.zcard(leases)) == (0, 0)
