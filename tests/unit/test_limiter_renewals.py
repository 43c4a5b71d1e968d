"""renew.lua and the Renewals task against a real Redis: live leases keep their slot, settled
ones are never added back, and a Redis that is away fails the renewal, not the request."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Limits
from gateway.errors import RateLimited
from gateway.limits.limiter import Limiter, scope_keys
from gateway.limits.renewals import Renewals
from tests.unit.test_limiter import settle, who

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_renew_moves_expiry_only_of_leases_still_held(redis: Redis) -> None:
    limiter = Limiter(redis, lease_ttl_s=5.0)
    principal = who(Limits(max_concurrency=2), Limits(max_concurrency=2))
    kept = await limiter.admit(principal, 1)
    gone = await limiter.admit(principal, 1)
    await settle(redis, principal, gone, 1)
    key_keys, tenant_keys = scope_keys(principal.tenant, principal.key_id)
    before = await redis.zscore(key_keys[2], kept.lease)
    await asyncio.sleep(0.05)  # Redis's clock moves on
    held = await limiter.renew([(principal, kept.lease), (principal, gone.lease)])
    assert held == 2  # kept, in both scopes; gone in neither
    for leases in (key_keys[2], tenant_keys[2]):
        assert await redis.zrange(leases, 0, -1) == [kept.lease.encode()]
    after = await redis.zscore(key_keys[2], kept.lease)
    assert before is not None
    assert after is not None
    assert after > before


async def test_renewals_keep_a_slot_past_the_ttl_until_dropped(redis: Redis) -> None:
    limiter = Limiter(redis, lease_ttl_s=0.3)
    principal = who(Limits(max_concurrency=1))
    renewals = Renewals(limiter, interval_s=0.1)
    admission = await limiter.admit(principal, 1)
    renewals.hold(principal, admission.lease)
    try:
        await asyncio.sleep(0.6)  # two ttls: an unrenewed lease would have expired
        with pytest.raises(RateLimited):
            await limiter.admit(principal, 1)
        assert renewals.renewed > 0
        renewals.drop(admission.lease)
        await asyncio.sleep(0.4)  # no longer renewed: it expires by itself
        await limiter.admit(principal, 1)
    finally:
        await renewals.close()


async def test_a_renewal_redis_refuses_is_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2)  # nothing listens
    renewals = Renewals(Limiter(broken), interval_s=0.05)
    renewals.hold(who(Limits(max_concurrency=1)), "lease-1")
    try:
        with caplog.at_level(logging.WARNING, "llmaas.limits"):
            async with asyncio.timeout(10):
                while renewals.failures < 4:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        assert renewals.task is not None
        assert not renewals.task.done()  # still trying
        # once per outage (found by review 2026-12-07: a warning every interval of a hang)
        failed = [r for r in caplog.records if r.getMessage().startswith("lease renewal failed")]
        assert len(failed) == 1
    finally:
        await renewals.close()
        await broken.aclose()


async def test_an_outage_of_renewals_ends_when_redis_answers_an_admission(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by review 2026-12-07: only a renewal that went through ended a renewals outage, so
    with no stream long enough to need one its line came at the next outage's start, and that
    outage's first failure was not logged. Redis answering an admission ends it too, once no
    lease waits for the next tick."""
    broken = Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2)  # nothing listens
    renewals = Renewals(Limiter(broken), interval_s=0.05)
    try:
        with caplog.at_level(logging.INFO, "llmaas.limits"):
            for outage in range(2):
                renewals.hold(who(Limits(max_concurrency=1)), f"lease-{outage}")
                async with asyncio.timeout(10):
                    while renewals.outage.failures < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                renewals.redis_back()  # a lease still waits: its next renewal will tell
                assert renewals.outage.failures >= 2
                renewals.drop(f"lease-{outage}")  # the stream ended
                renewals.redis_back()  # Redis answered an admission
                assert renewals.outage.failures == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "llmaas.limits"]
        back = "lease renewals go through again"
        assert [m.split(",")[0] if m != back else m for m in lines] == [
            "lease renewal failed",
            back,
            "lease renewal failed",
            back,
        ]
    finally:
        await renewals.close()
        await broken.aclose()
