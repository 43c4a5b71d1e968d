"""Admissions fetched ahead (gateway/limits/prefetch.py) through AdmissionControl, against a real
Redis: what skips the round trip, that everything taken or shelved is charged, that what is
not used goes back, and that near a limit (or across two replicas) nothing is over-admitted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import Admission, Limiter, scope_keys
from gateway.limits.prefetch import HEADROOM, SWEEP_MIN
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
    """Fetched admissions by outcome (used, expired)."""
    return _sample(admission, "llmaas_ratelimit_prefetched_total", outcome)


def released(admission: AdmissionControl, outcome: str) -> float:
    """Releases by outcome (refunded, cancelled, released)."""
    return _sample(admission, "llmaas_ratelimit_releases_total", outcome)


def _sample(admission: AdmissionControl, metric: str, outcome: str) -> float:
    value = admission.metrics.registry.get_sample_value(metric, {"outcome": outcome})
    return value or 0.0


async def admitted(
    admission: AdmissionControl, caller: Principal, body: dict[str, Any] = BODY
) -> Admission:
    """One request's admission, then the fill it asked for ahead, if any, arrived (as it does
    between one request and the next when the event loop gets a turn)."""
    result = await admission.admit(caller, body)
    assert result is not None
    await filled(admission)
    return result


async def filled(admission: AdmissionControl) -> None:
    await asyncio.gather(*admission.filling)


async def test_a_busy_key_skips_redis_and_every_admission_is_charged(redis: Redis) -> None:
    """64 requests in a row make a handful of calls, and only the first two wait for one: the
    2nd fetches 1 ahead, and from then on the request that takes the shelf down to half its
    size has the next fill asked for in the background (2, 4, 8, ... 64). Each has its own
    lease, the headers count down one by one as Redis answered them, and Redis holds an entry
    (request log, lease, tokens) for each request and each shelved admission."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3) as admission:
        results = [await admitted(admission, caller)]  # (and the script loaded)
        before = trips(admission)
        results += [await admitted(admission, caller) for _ in range(63)]
        calls = 1 + trips(admission) - before
        waiting = shelved(admission)
        state = await charges(redis, caller)
    # Calls at the 1st (none yet), 2nd (1 more); fills ahead at the 3rd (2), 4th (4), 7th (8),
    # 13th (16), 25th (32) and 49th (64): 65 of those 127 left when the 64th is through.
    assert (calls, waiting) == (8, 1 + 2 + 4 + 8 + 16 + 32 + 64 - 62)
    assert counted(admission, "used") == 62
    assert len({r.lease for r in results}) == 64
    remaining = [r.requests[1] for r in results if r.requests is not None]
    assert remaining == list(range(10**6 - 1, 10**6 - 65, -1))
    assert state["requests"] == [64 + waiting, 0]
    assert state["leases"] == [64 + waiting, 0]


async def test_a_shelf_is_refilled_in_the_background_before_it_runs_out(redis: Redis) -> None:
    """Requests a moment apart (the loop turns between them, as when serving) never find the
    shelf empty once it is stocked: no request after the first two waits for Redis, and the
    calls stay a few per hundred requests."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=1) as admission:
        for _ in range(200):
            result = await admission.admit(caller, BODY)
            assert result is not None
            await asyncio.sleep(0.002)  # (a fill's round trip takes a fraction of it)
        calls = trips(admission)
    # Without fills ahead ~190 of 200 took one: the request that found the shelf empty asked.
    assert counted(admission, "used") >= 200 - 2 - 3
    assert calls <= 2 + 1 + 10, calls  # the script load, two on the path, fills up to 128


async def eight_and_a_shelf(admission: AdmissionControl, caller: Principal) -> int:
    """Eight requests of a busy key, and how many admissions they left fetched ahead."""
    for _ in range(8):
        await admitted(admission, caller)
    waiting = shelved(admission)
    assert waiting > 0
    return waiting


async def test_what_is_not_used_goes_back_when_it_expires(redis: Redis) -> None:
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=0.2) as admission:
        waiting = await eight_and_a_shelf(admission, caller)
        assert (await charges(redis, caller))["requests"] == [8 + waiting, 0]
        await asyncio.sleep(0.3)  # expired: queued for release
        assert admission.releases is not None
        await asyncio.wait_for(admission.releases.drained.wait(), 5)
        state = await charges(redis, caller)
        assert counted(admission, "expired") == waiting
        assert shelved(admission) == 0
    assert state["requests"] == [8, 0]
    assert state["leases"] == [8, 0]


def block_the_loop(seconds: float) -> None:
    """What a busy process does to its timers: nothing runs meanwhile."""
    time.sleep(seconds)


async def test_one_past_its_time_is_not_handed_out_when_its_timer_is_late(redis: Redis) -> None:
    """A loop too busy to run the expiry timer on time: an admission over prefetch_ttl_s old
    (its rpm entry that old, its lease too) goes back instead of to a request."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=0.05) as admission:
        waiting = await eight_and_a_shelf(admission, caller)
        block_the_loop(0.1)  # the expiry timer has not run
        before = trips(admission)
        await admission.admit(caller, BODY)
        assert trips(admission) > before  # it asked Redis: nothing old was handed out
        assert counted(admission, "expired") == waiting


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


async def test_no_admission_is_fetched_once_fewer_slots_are_free_than_headroom(
    redis: Redis,
) -> None:
    """Each admission fetched holds a concurrency slot: with 40 allowed and 30 of them
    running, what is free (10) is too little to fetch for. (Judged by the limit, 40, a shelf
    held 2 of the last slots while another replica was refused.)"""
    caller = who(Limits(rpm=10**6, max_concurrency=2 * HEADROOM))
    async with control(redis) as admission:
        for _ in range(35):  # admitted, never settled: all still running
            await admitted(admission, caller)
        assert shelved(admission) == 0
        leases = scope_keys(caller.tenant, caller.scope_id)[0][2]
        assert await redis.zcard(leases) == 35  # no slot held idle


async def test_concurrent_requests_fetch_once(redis: Redis) -> None:
    """Sixteen requests at once on a shelf of two: two take them, and the first of those asks
    for one fill of four (not sixteen); four of the others, finding the shelf empty with that
    fill on its way, wait for it and take what it brings, and the other ten ask Redis for
    themselves alone. The shelf ran out before its fill came (twice as many: 8) and half of it
    went at once (again: 16), so the next fill asks for 16."""
    caller = who(BIG)
    async with control(redis) as admission:
        await admitted(admission, caller)  # a first reply shows the room
        await admitted(admission, caller)  # fetches 1
        await admitted(admission, caller)  # takes it: 2 fetched ahead
        assert shelved(admission) == 2
        results = await asyncio.gather(*(admitted(admission, caller) for _ in range(16)))
        waiting = shelved(admission)
        state = await charges(redis, caller)
    assert len({r.lease for r in results}) == 16
    assert waiting == 16, waiting  # one fill of four times the last one
    assert counted(admission, "used") == 1 + 2 + 4
    assert state["requests"] == [1 + 2 + 16 + waiting, 0]


async def shelf_empty_with_a_fill_out(
    admission: AdmissionControl, caller: Principal
) -> list[Admission]:
    """Three requests (2 shelved), then two in a row take both: a fill of 4 is on its way.
    Their five admissions."""
    results = [await admitted(admission, caller) for _ in range(3)]
    before = trips(admission)
    for _ in range(2):  # the first takes the shelf down to half: a fill of 4 goes out
        result = await admission.admit(caller, BODY)  # (no turn of the loop between)
        assert result is not None
        results.append(result)
    assert len(admission.filling) == 1
    assert shelved(admission) == 0
    assert trips(admission) == before  # both took from the shelf; the fill not yet written
    return results


async def test_a_request_meeting_an_empty_shelf_waits_for_the_fill_on_its_way(
    redis: Redis,
) -> None:
    """Requests in a row quicker than a fill's round trip: the one that finds the shelf empty
    while the fill is out waits for it rather than asking Redis itself, so it makes no call of
    its own and the key's admissions are taken in the order Redis charged them (the headers
    count down one by one). One needing more tokens than the fill reserves asks Redis."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3) as admission:
        results = await shelf_empty_with_a_fill_out(admission, caller)
        large, result = await asyncio.gather(
            admission.admit(caller, {**BODY, "max_tokens": 1000}),  # asks Redis itself
            admission.admit(caller, BODY),  # waits for that fill, takes its first
        )
        assert large is not None
        assert result is not None
        results.append(result)
        assert counted(admission, "used") == 1 + 2 + 1  # the large one took none
    remaining = [r.requests[1] for r in results if r.requests is not None]
    assert remaining == list(range(10**6 - 1, 10**6 - 7, -1))
    assert large.requests is not None
    assert large.requests[1] == 10**6 - 10  # after the fill's 4


async def test_a_waiting_request_whose_client_leaves_loses_nothing(redis: Redis) -> None:
    """A request waiting for the fill on its way is cancelled (its client left): the admission
    it would have been handed stays on the shelf for the next, and every one is accounted
    for in Redis."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3) as admission:
        await shelf_empty_with_a_fill_out(admission, caller)
        task = asyncio.create_task(admission.admit(caller, BODY))
        await asyncio.sleep(0)  # it waits for the fill
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await filled(admission)
        assert task.cancelled()
        assert shelved(admission) == 4
        assert counted(admission, "used") == 3
        state = await charges(redis, caller)
    assert state["requests"] == [5 + 4, 0]


async def test_a_request_waits_no_longer_than_the_timeout_for_a_fill(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill Redis does not answer within limits.timeout_s is given up (charging nothing),
    and so is waiting for it: the request that waited asks Redis for itself."""
    caller = who(BIG)
    async with control(redis, prefetch_ttl_s=3, timeout_s=0.2) as admission:
        for _ in range(3):
            await admitted(admission, caller)
        assert admission.limiter is not None
        real = admission.limiter.admit_all
        answer = asyncio.Event()  # Redis "answers" the fill only once the request is back

        async def stalled(*args: Any) -> Any:
            await answer.wait()
            return await real(*args)

        monkeypatch.setattr(admission.limiter, "admit_all", stalled)
        for _ in range(2):
            assert await admission.admit(caller, BODY) is not None  # a fill of 4 is asked for
        started = asyncio.get_running_loop().time()
        request = asyncio.create_task(admission.admit(caller, BODY))
        await asyncio.sleep(0)  # the fill goes out and stalls; the request waits for it
        monkeypatch.setattr(admission.limiter, "admit_all", real)
        result = await asyncio.wait_for(request, 10)  # back while the fill stalls: not waited for
        waited = asyncio.get_running_loop().time() - started
        answer.set()
        await filled(admission)
        assert admission.releases is not None
        await asyncio.wait_for(admission.releases.drained.wait(), 5)
        assert result is not None
        assert waited >= 0.2, waited  # it gave the fill its timeout
        assert shelved(admission) == 0
        assert counted(admission, "used") == 3  # none handed to it
        assert released(admission, "cancelled") == 4
        state = await charges(redis, caller)
    assert result.requests is not None
    assert result.requests[1] == 10**6 - 6  # its own call
    assert state["requests"] == [6, 0]


async def test_a_request_needing_more_tokens_than_shelved_asks_redis(redis: Redis) -> None:
    """A request that reserves more than any shelved admission asks Redis; the next fill
    reserves what the largest request since the last fill did, so that requests of both sizes
    take from it; once only small ones came between fills, fills reserve what they do."""
    caller = who(BIG)
    large_body = {**BODY, "max_tokens": 1000}
    async with control(redis, prefetch_ttl_s=3) as admission:
        small = [await admitted(admission, caller) for _ in range(4)]  # 1 + 2 + 4 fetched
        assert shelved(admission) == 5
        before = trips(admission)
        large = await admitted(admission, caller, large_body)
        assert large.reserved_tokens > 1000 > small[0].reserved_tokens
        assert trips(admission) == before + 1
        assert shelved(admission) == 5
        assert admission.prefetch is not None
        (shelf,) = admission.prefetch.shelves.values()

        def sizes() -> list[int]:
            return [a.reserved_tokens for a in shelf.ready]

        # Three small ones take three: the third leaves two, half the shelf's size (4), and
        # the fill it asks for (8) reserves what the large one did.
        small += [await admitted(admission, caller) for _ in range(3)]
        assert {s.reserved_tokens for s in small} == {small[0].reserved_tokens}
        assert sizes() == [small[0].reserved_tokens] * 2 + [large.reserved_tokens] * 8
        before = trips(admission)
        taken = await admitted(admission, caller, large_body)  # takes one of those: no trip
        assert trips(admission) == before
        assert taken.reserved_tokens == large.reserved_tokens
        assert len(sizes()) == 9
        # Small ones take the oldest: the next fill (at four left: 16) still reserves the
        # large size (the large one came since the fill before); the one after it (at eight
        # left: 32) reserves the small size.
        while shelf.size < 32:
            await admitted(admission, caller)
        assert sizes()[-32:] == [small[0].reserved_tokens] * 32
        assert sizes()[:-32] == [large.reserved_tokens] * (len(sizes()) - 32)


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
        refunded = released(admission, "refunded")
        assert shelved(admission) == 0
    assert refunded == 2  # they had run
    assert (await charges(redis, caller))["requests"] == [1, 0]


async def test_closing_with_a_fill_on_its_way_gives_it_back(redis: Redis) -> None:
    """A fill asked for ahead and still out when the process closes: it is cancelled, and
    whatever it charged goes back with what was shelved."""
    caller = who(BIG)
    async with control(redis) as admission:
        for _ in range(3):
            await admitted(admission, caller)  # 2 shelved
        assert await admission.admit(caller, BODY) is not None  # takes one: a fill of 4 asked
        assert len(admission.filling) == 1
        await asyncio.sleep(0)  # its call is written
    assert not admission.filling
    assert (await charges(redis, caller))["requests"] == [4, 0]
    assert released(admission, "refunded") + released(admission, "cancelled") == 1 + 4


async def test_a_fill_redis_did_not_answer_gives_back_and_serves_on(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill asked for ahead that fails (Redis went away) raises nothing anywhere: its leases
    are released (cancelled: they never ran), and the key's next request that finds the shelf
    empty asks Redis on its own path, as without a shelf."""
    caller = who(BIG)
    async with control(redis) as admission:
        for _ in range(3):
            await admitted(admission, caller)  # 2 shelved
        assert admission.limiter is not None
        real = admission.limiter.admit_all

        async def unreachable(*args: Any) -> Any:
            raise RedisConnectionError("Connection refused")

        monkeypatch.setattr(admission.limiter, "admit_all", unreachable)
        await admitted(admission, caller)  # takes one; its fill fails
        monkeypatch.setattr(admission.limiter, "admit_all", real)
        assert admission.releases is not None
        await asyncio.wait_for(admission.releases.drained.wait(), 5)
        assert released(admission, "cancelled") == 4
        await admitted(admission, caller)  # takes the last one; a fill (of 8 now) goes out
        assert shelved(admission) == 8
        assert counted(admission, "used") == 3
        state = await charges(redis, caller)
    assert state["requests"] == [5 + 8, 0]


async def test_callers_gone_quiet_are_forgotten(redis: Redis) -> None:
    """Found by review 2026-12-07: every caller ever admitted through Redis kept its entry for
    good (each JWT subject, each change of a key's or tenant's limits: a new name), though
    nothing was on it: 18,500 JWT subjects took a gateway from 94 to 176 MB. An entry with
    nothing on it, nothing coming and no answer for prefetch_ttl_s goes when the table grows;
    a busy key's stays, and its requests go on skipping Redis."""
    busy = who(BIG)
    async with control(redis, prefetch_ttl_s=0.05) as admission:
        assert admission.prefetch is not None
        shelves = admission.prefetch.shelves
        await admitted(admission, busy)
        used = counted(admission, "used")
        most = 0
        for n in range(4 * SWEEP_MIN):
            await admission.admit(who(BIG), BODY)  # a caller seen once
            if n % 8 == 0:
                await admitted(admission, busy)
            most = max(most, len(shelves))
        assert most <= SWEEP_MIN
        assert any(shelf.caller == busy for shelf in shelves.values())
        assert counted(admission, "used") - used >= 4 * SWEEP_MIN / 8 * 0.8  # (of 512)
