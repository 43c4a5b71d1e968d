"""Admissions fetched ahead (gateway/limits/prefetch.py) through AdmissionControl, against a real
Redis: what skips the round trip, that everything taken or shelved is charged, that what is
not used goes back, and that near a limit (or across two replicas) nothing is over-admitted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import Admission, Limiter
from gateway.limits.prefetch import HEADROOM
from gateway.metrics import Metrics
from gateway.settings import LimitsSettings
from tests.unit.test_limiter import charges, who

pytestmark = pytest.mark.asyncio(loop_scope="session")
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
BIG = Limits(rpm=10**6, tpm=10**9, max_concurrency=10**4)


@asynccontextmanager
async def control(redis: Redis, **settings: Any) -> AsyncIterator[AdmissionControl]:
    """Admission control with its own pipe (its trips are its admission calls)."""
    admission = AdmissionControl(Limiter(redis), LimitsSettings.model_validate(settings), Metrics())
    try:
        yield admission
    finally:
        await admission.close()


def trips(admission: AdmissionControl) -> int:
    assert admission.limiter is not None
    return admission.limiter.pipe.trips


def shelved(admission: AdmissionControl) -> int:
    assert admission.prefetch is not None
    return sum(len(shelf.ready) for shelf in admission.prefetch.shelves.values())


def counted(admission: AdmissionControl, outcome: str) -> float:
    value = admission.metrics.registry.get_sample_value(
        "llmaas_ratelimit_prefetched_total", {"outcome": outcome}
    )
    return value or 0.0


async def admitted(admission: AdmissionControl, caller: Principal) -> Admission:
    result = await admission.admit(caller, BODY)
    assert result is not None
    return result


async def test_a_busy_key_skips_redis_and_every_admission_is_charged(redis: Redis) -> None:
    """64 requests in a row make a handful of calls (1, 2, 4, ... fetched ahead); each has its
    own lease, the headers count down one by one as Redis answered them, and Redis holds an
    entry (request log, lease, tokens) for each request and each shelved admission."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3) as admission:
        results = [await admitted(admission, caller)]  # (and the script loaded)
        before = trips(admission)
        results += [await admitted(admission, caller) for _ in range(63)]
        calls = 1 + trips(admission) - before
        waiting = shelved(admission)
        state = await charges(redis, caller)
    # Calls at the 1st (none yet), 2nd (1 more), 4th (2), 7th (4), 12th, 21st and 38th (32).
    assert (calls, waiting) == (7, 70 - 64)
    assert len({r.lease for r in results}) == 64
    remaining = [r.requests[1] for r in results if r.requests is not None]
    assert remaining == list(range(10**6 - 1, 10**6 - 65, -1))
    assert state["requests"] == [64 + waiting, 0]
    assert state["leases"] == [64 + waiting, 0]
    assert counted(admission, "used") == 64 - calls


async def test_what_is_not_used_goes_back_when_it_expires(redis: Redis) -> None:
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=0.2) as admission:
        for _ in range(8):
            await admitted(admission, caller)
        waiting = shelved(admission)
        assert waiting > 0
        assert (await charges(redis, caller))["requests"] == [8 + waiting, 0]
        await asyncio.sleep(0.3)  # expired: queued for release
        assert admission.releases is not None
        await asyncio.wait_for(admission.releases.drained.wait(), 5)
        state = await charges(redis, caller)
        assert counted(admission, "expired") == waiting
        assert shelved(admission) == 0
    assert state["requests"] == [8, 0]
    assert state["leases"] == [8, 0]


async def test_closing_gives_back_what_is_shelved(redis: Redis) -> None:
    caller = who(BIG)
    async with control(redis) as admission:
        for _ in range(8):
            await admitted(admission, caller)
        assert shelved(admission) > 0
    assert (await charges(redis, caller))["requests"] == [8, 0]


async def test_near_a_limit_every_request_asks_redis(redis: Redis) -> None:
    """rpm 10 leaves no room to fetch (1/HEADROOM of what remains): each request is its own
    call, the 11th is refused, and the log holds exactly the 10 admitted."""
    limit = HEADROOM // 2
    caller = who(Limits(rpm=limit))
    async with control(redis) as admission:
        for _ in range(limit):
            await admitted(admission, caller)
        with pytest.raises(RateLimited):
            await admission.admit(caller, BODY)
        assert trips(admission) == limit + 1
        assert shelved(admission) == 0
    assert (await charges(redis, caller))["requests"] == [limit, 0]


async def test_a_small_concurrency_limit_is_never_fetched_for(redis: Redis) -> None:
    caller = who(Limits(rpm=10**6, max_concurrency=HEADROOM - 1))
    async with control(redis) as admission:
        for _ in range(5):
            await admitted(admission, caller)
        assert trips(admission) == 5
        assert shelved(admission) == 0


async def test_concurrent_requests_fetch_once(redis: Redis) -> None:
    """Sixteen requests meeting an empty shelf at once ask for one fill, not sixteen."""
    caller = who(BIG)
    async with control(redis) as admission:
        await admitted(admission, caller)  # a first reply shows the room
        await admitted(admission, caller)  # fetches 1
        await admitted(admission, caller)  # takes it
        results = await asyncio.gather(*(admitted(admission, caller) for _ in range(16)))
        waiting = shelved(admission)
        state = await charges(redis, caller)
    assert len({r.lease for r in results}) == 16
    assert waiting <= 2, waiting  # one fill of (at most) twice the last one
    assert state["requests"] == [1 + 2 + 16 + waiting, 0]


async def test_a_request_needing_more_tokens_than_shelved_asks_redis(redis: Redis) -> None:
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3) as admission:
        for _ in range(4):
            await admitted(admission, caller)
        assert shelved(admission) == 2
        before = trips(admission)
        bigger = await admission.admit(caller, {**BODY, "max_tokens": 1000})
        assert bigger is not None
        assert bigger.reserved_tokens > 1000
        assert trips(admission) == before + 1
        # The next fill reserves what the largest request since the last one did: requests of
        # both sizes take from it.
        small = [await admitted(admission, caller) for _ in range(3)]  # 2 shelved, 1 fills
        assert [s.reserved_tokens for s in small[:2]] == [small[2].reserved_tokens] * 2
        assert shelved(admission) == 4
        assert admission.prefetch is not None
        (shelf,) = admission.prefetch.shelves.values()
        assert {a.reserved_tokens for a in shelf.ready} == {bigger.reserved_tokens}
        before = trips(admission)
        taken = await admission.admit(caller, {**BODY, "max_tokens": 1000})
        assert taken is not None
        assert trips(admission) == before
        # Only small ones since: 3 taken, a fill of 8 (the large one came after the last
        # fill), 8 taken, then a fill of 16 reserving what the small ones do.
        for _ in range(3 + 1 + 8 + 1):
            await admitted(admission, caller)
        (shelf,) = admission.prefetch.shelves.values()
        assert {a.reserved_tokens for a in shelf.ready} == {small[2].reserved_tokens}
        assert shelved(admission) == 16


async def test_prefetch_max_zero_fetches_nothing(redis: Redis) -> None:
    caller = who(BIG)
    async with control(redis, prefetch_max=0) as admission:
        assert admission.prefetch is None
        for _ in range(10):
            await admitted(admission, caller)
        assert trips(admission) == 10
    assert (await charges(redis, caller))["requests"] == [10, 0]


async def test_two_replicas_never_admit_more_than_the_limit(redis: Redis) -> None:
    """Two gateways' admission control on one Redis, rpm 400, 600 requests each at once:
    together they admit at most 400, and fewer only by what sat on their shelves when they
    were refused (at most 1/HEADROOM of what remained, each); closing gives that back."""
    limit = 400
    caller = who(Limits(rpm=limit))

    async def hammer(admission: AdmissionControl) -> int:
        ok = 0
        for _ in range(30):
            results = await asyncio.gather(
                *(admission.admit(caller, BODY) for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, Admission | RateLimited) for r in results), results
            ok += sum(isinstance(r, Admission) for r in results)
        return ok

    async with control(redis) as first, control(redis) as second:
        done = await asyncio.gather(hammer(first), hammer(second))
        left = shelved(first) + shelved(second)
        assert (await charges(redis, caller))["requests"] == [sum(done) + left, 0]
    assert limit - 2 * (limit // HEADROOM) <= sum(done) <= limit
    assert sum(done) + left == limit
    assert (await charges(redis, caller))["requests"] == [sum(done), 0]


async def test_a_request_cancelled_while_its_call_is_out_is_charged_nothing(redis: Redis) -> None:
    """A client that leaves while its admission call (its own and one fetched ahead) is out:
    both ran in Redis, and both are given back."""
    caller = who(BIG)
    async with control(redis) as admission:
        await admitted(admission, caller)  # a first answer shows the room: the next one fetches
        task = asyncio.create_task(admission.admit(caller, BODY))
        await asyncio.sleep(0)  # its call is written
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert admission.releases is not None
        await asyncio.wait_for(admission.releases.drained.wait(), 5)
        refunded = admission.metrics.registry.get_sample_value(
            "llmaas_ratelimit_releases_total", {"outcome": "refunded"}
        )
        assert shelved(admission) == 0
    assert refunded == 2  # they had run
    assert (await charges(redis, caller))["requests"] == [1, 0]
