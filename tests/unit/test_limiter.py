"""admission.lua, release.lua and the limits half of metering/settle.lua against a real Redis."""

from __future__ import annotations

import asyncio
import re
from itertools import count

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.limits import control
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import (
    Admission,
    AdmissionCancelled,
    Limiter,
    duration,
    new_lease,
    scope_keys,
)
from gateway.metering.ledger import Ledger
from gateway.metering.record import new_record_id
from gateway.metering.settlement import LimitSettlement, Settlement
from gateway.metrics import Metrics
from gateway.settings import LimitsSettings, MeteringSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")
_tenants = count()


async def settle(redis: Redis, principal: Principal, admission: Admission, used: int) -> None:
    """Settle as the gateway does after an answer: charge real usage, release the lease."""
    await settle_in(redis, principal, admission, used, window_s=60)


async def settle_in(
    redis: Redis, principal: Principal, admission: Admission, used: int, *, window_s: float
) -> None:
    limits = LimitSettlement(
        admission.lease,
        used - admission.reserved_tokens,
        principal.key_limits.tpm or 0,
        principal.tenant_limits.tpm or 0,
        *admission.charged_until,
    )
    settlement = Settlement(new_record_id(), principal.tenant, principal.scope_id, None, limits)
    await Ledger(redis, MeteringSettings(), window_s=window_s).write([settlement])


def who(key: Limits | None = None, tenant: Limits | None = None) -> Principal:
    """A principal of a fresh tenant, so tests never share counters."""
    return Principal(
        tenant=f"t{next(_tenants)}",
        key_id="k",
        source="api_key",
        key_limits=key or Limits(),
        tenant_limits=tenant or Limits(),
    )


async def admit_all(
    limiter: Limiter, principal: Principal, n: int, tokens: int = 1
) -> tuple[list[Admission], list[RateLimited]]:
    results = await asyncio.gather(
        *(limiter.admit(principal, tokens) for _ in range(n)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(admitted) + len(refused) == n
    return admitted, refused


async def test_rpm_is_exact_under_concurrency(redis: Redis) -> None:
    admitted, refused = await admit_all(Limiter(redis), who(Limits(rpm=100)), 1000)
    assert len(admitted) == 100
    assert len(refused) == 900
    error = refused[0]
    assert error.status_code == 429
    assert error.body()["error"]["type"] == "requests"
    assert error.code == "rate_limit_exceeded"
    assert "key scope" in error.message
    assert "limit 100" in error.message
    assert int(error.headers["retry-after"]) >= 1


def refusal(result: object) -> tuple[str, str]:
    assert isinstance(result, RateLimited), result
    return result.scope, result.limit_kind


async def test_admissions_gathered_together_go_as_one_call_and_admit_in_order(
    redis: Redis,
) -> None:
    """Admissions of one key that gather while a batch is on the wire go to Redis as one
    admission.lua call, which decides each in turn as separate calls would: tokens, requests
    and concurrency at both scopes, a refusal charging nothing, a repeated lease once."""
    limiter = Limiter(redis, window_s=3600)
    built: list[int] = []
    build = limiter._admit_command

    def counted(name: object, items: list[object]) -> tuple[object, ...]:
        built.append(len(items))
        return build(name, items)

    limiter._admit_command = counted  # type: ignore[method-assign]
    principal = who(Limits(tpm=1000, max_concurrency=5), Limits(rpm=4))
    await limiter.admit(who(), 0)  # the script loaded, the connection open
    built.clear()
    lease = new_lease()
    on_the_wire = asyncio.ensure_future(limiter.pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    calls = [limiter.admit(principal, tokens) for tokens in (600, 500, 300, 10, 10, 10)]
    results = await asyncio.gather(
        *calls,
        limiter.admit(principal, 10, lease),
        limiter.admit(principal, 10, lease),
        return_exceptions=True,
    )
    assert await on_the_wire is None
    assert built == [8]  # one call for all eight
    kinds = [r if isinstance(r, Admission) else refusal(r) for r in results[:6]]
    assert kinds[1] == ("key", "tokens")  # 600 + 500 > 1000; the later, smaller ones fit
    assert kinds[5] == ("tenant", "requests")  # the fifth request of a tenant with rpm 4
    admitted = [r for r in kinds if isinstance(r, Admission)]
    assert [a.tokens[1] for a in admitted if a.tokens] == [400, 100, 90, 80]
    assert [a.requests[1] for a in admitted if a.requests] == [3, 2, 1, 0]
    # The repeated lease came after the tenant's fourth request: refused once, both times.
    assert [refusal(r) for r in results[6:]] == [("tenant", "requests")] * 2
    state = await charges(redis, principal)
    assert state["requests"] == [0, 4]
    assert state["leases"] == [4, 0]


async def test_the_same_lease_gathered_twice_charges_once(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(Limits(tpm=1000, max_concurrency=2))
    await limiter.admit(who(), 0)  # the script loaded, the connection open
    lease = new_lease()
    on_the_wire = asyncio.ensure_future(limiter.pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    first, again = await asyncio.gather(
        limiter.admit(principal, 100, lease), limiter.admit(principal, 100, lease)
    )
    assert await on_the_wire is None
    assert first.tokens is not None
    assert first.tokens[1] == 900
    assert again == Admission(lease, 100, None, None)  # seen: admitted once, charged once
    state = await charges(redis, principal)
    assert state["leases"] == [1, 0]


async def test_admissions_after_redis_lost_its_scripts_load_them_again(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(Limits(rpm=10))
    await limiter.admit(principal, 1)
    await redis.script_flush()  # as after a Redis restart: NOSCRIPT for the next calls
    admitted, refused = await admit_all(limiter, principal, 12)
    assert (len(admitted), len(refused)) == (9, 3)  # each charged once, after the reload


async def test_headers_describe_the_tightest_scope(redis: Redis) -> None:
    principal = who(Limits(rpm=100, tpm=10_000), Limits(rpm=50))
    admission = await Limiter(redis).admit(principal, 250)
    headers = admission.headers()
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"  # this request leaves the log in 60 s
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert headers["x-ratelimit-remaining-tokens"] == "9750"


async def test_no_headers_without_limits(redis: Redis) -> None:
    assert (await Limiter(redis).admit(who(), 10)).headers() == {}


async def test_token_reservations_never_exceed_tpm_and_settle_to_real_usage(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(Limits(tpm=1000))
    admitted, refused = await admit_all(limiter, principal, 10, tokens=300)
    assert len(admitted) == 3
    assert refused[0].body()["error"]["type"] == "tokens"
    headers = refused[0].headers  # as OpenAI's 429s: the refusing limit's figures, none left
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in headers
    for admission in admitted:  # each really used 100 of its 300
        await settle(redis, principal, admission, 100)
    assert (await limiter.admit(principal, 650)).tokens is not None  # 300 used + 650 <= 1000
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 100)


async def test_a_request_larger_than_the_limit_says_so(redis: Redis) -> None:
    with pytest.raises(RateLimited) as info:
        await Limiter(redis).admit(who(Limits(tpm=100)), 500)
    assert "Request too large" in info.value.message
    # no wait would make room: the SDKs are told not to retry, and no reset is promised
    assert info.value.headers == {"x-should-retry": "false", "x-ratelimit-limit-tokens": "100"}


async def test_refusal_at_one_scope_charges_no_scope(redis: Redis) -> None:
    limiter = Limiter(redis)
    principal = who(Limits(rpm=100), Limits(rpm=2))
    await admit_all(limiter, principal, 3)  # the third is refused by the tenant
    unlimited_tenant = Principal(
        tenant=principal.tenant, key_id="k", source="api_key", key_limits=Limits(rpm=100)
    )
    admission = await limiter.admit(unlimited_tenant, 1)
    assert admission.requests is not None
    assert admission.requests[1] == 97  # 100 - 2 earlier - this one: the refusal charged nothing


async def test_concurrency_leases_are_released_and_expire(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(Limits(max_concurrency=3))
    admitted, refused = await admit_all(limiter, principal, 50)
    assert len(admitted) == 3
    assert "in flight" in refused[0].message
    assert refused[0].headers == {"retry-after": "1"}  # soon: not the leases' expiry
    await settle(redis, principal, admitted[0], 1)
    await limiter.admit(principal, 1)  # the released slot is free again

    crashing = Limiter(redis, lease_ttl_s=0.3)
    other = who(Limits(max_concurrency=2))
    await admit_all(crashing, other, 2)  # never settled: the gateway "died"
    with pytest.raises(RateLimited):
        await crashing.admit(other, 1)
    await asyncio.sleep(0.4)
    await crashing.admit(other, 1)  # the leases expired


async def test_no_burst_at_a_window_edge_and_capacity_returns_at_the_reset(redis: Redis) -> None:
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(rpm=10))  # a 1 s "minute"
    admitted, _ = await admit_all(limiter, principal, 10)
    assert len(admitted) == 10
    await asyncio.sleep(0.5)  # where a fixed window could have rolled over
    admitted, refused = await admit_all(limiter, principal, 10)
    assert admitted == []
    advertised = re.search(r"try again in (\d+)ms", refused[0].message)
    assert advertised is not None
    await asyncio.sleep(int(advertised.group(1)) / 1000 + 0.05)
    admitted, refused = await admit_all(limiter, principal, 15)
    assert len(admitted) == 10  # the whole limit is back, and never more than it
    assert len(refused) == 5


async def test_refused_by_two_limits_the_wait_told_is_the_longer_and_then_admits(
    redis: Redis,
) -> None:
    # The first limit found refusing answered: an rpm's short wait where the tpm needed longer,
    # so a client that waited as told was refused again (by the tpm, with a new wait).
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(rpm=2, tpm=100))
    await limiter.admit(principal, 1)
    await asyncio.sleep(0.6)
    await limiter.admit(principal, 90)  # the rpm full until ~0.4 s from now, the bucket ~0.9
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(principal, 90)  # both refuse: the tpm's wait (~0.8 s) is longer
    assert refused.value.kind == "tokens", refused.value.message
    advertised = re.search(r"try again in (\d+)ms", refused.value.message)
    assert advertised is not None, refused.value.message
    assert int(advertised.group(1)) > 600
    await asyncio.sleep(int(advertised.group(1)) / 1000 + 0.05)
    await limiter.admit(principal, 90)  # waited as told: admitted


async def test_token_capacity_returns_smoothly(redis: Redis) -> None:
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=100))  # 1 token per 10 ms
    await limiter.admit(principal, 100)
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 50)
    await asyncio.sleep(0.55)
    await limiter.admit(principal, 50)  # half the window gave back half the tokens
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 30)


async def test_small_charges_under_a_large_tpm_move_the_bucket_exactly(redis: Redis) -> None:
    """A TAT near 1.7e12 ms written with Lua's tostring kept 0.1 ms: at tpm 2M a 1-token
    request (0.03 ms) moved nothing and a 2-token one 0.1 ms (3.3 tokens)."""
    limiter, principal = Limiter(redis), who(Limits(tpm=2_000_000))  # 0.03 ms per token
    await limiter.admit(principal, 1_000_000)  # the TAT 30 s ahead: nothing drains meanwhile
    bucket = scope_keys(principal.tenant, principal.scope_id)[0][1]
    before = tat_of(await redis.get(bucket))
    for tokens in [1] * 500 + [2] * 250:
        await limiter.admit(principal, tokens)
    moved = tat_of(await redis.get(bucket)) - before
    # 1,000 tokens (within what a double near 1.7e12 holds: 2.4e-4 ms per addition, at most)
    assert moved == pytest.approx(1000 * 0.03, abs=750 * 2.5e-4)


def tat_of(value: object) -> float:
    """A token bucket's TAT, from its "TAT:tpm" (admission.lua)."""
    assert isinstance(value, bytes)
    return float(value.split(b":")[0])


def at_tpm(principal: Principal, tpm: int) -> Principal:
    """The same key once its tpm was changed (an operator's `keys update --tpm`)."""
    return Principal(principal.tenant, principal.key_id, "api_key", key_limits=Limits(tpm=tpm))


async def test_a_raised_tpm_has_room_at_once_for_what_it_adds(redis: Redis) -> None:
    """Found 2026-12-07: the bucket kept the time its tokens took at the old rate, so a key
    that had used its minute at tpm 1,000 and was raised to 100,000 waited most of a minute
    for its first request."""
    limiter, principal = Limiter(redis), who(Limits(tpm=1000))
    await limiter.admit(principal, 1000)  # its whole minute
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 1)
    raised = at_tpm(principal, 100_000)
    await limiter.admit(raised, 90_000)  # the 1,000 used take 0.6 s at the new rate
    with pytest.raises(RateLimited):
        await limiter.admit(raised, 10_000)  # 1,000 + 90,000 + 10,000 is past the minute


async def test_a_lowered_tpm_counts_what_was_used_at_the_new_rate(redis: Redis) -> None:
    """Found 2026-12-07: lowered from 100,000 to 1,000 after using 50,000, a key had room for
    500 more at once (its bucket half full at either rate)."""
    limiter, principal = Limiter(redis), who(Limits(tpm=100_000))
    await limiter.admit(principal, 50_000)
    lowered = at_tpm(principal, 1000)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(lowered, 1)
    # 50,000 tokens are 50 minutes at the new rate: the bucket is full, never more than a
    # window ahead (as a sliding window forgets what was used a minute ago), so one token's
    # time frees the first.
    assert 0 < int(refused.value.headers["retry-after-ms"]) <= 60


async def test_refused_after_a_lowered_tpm_the_bucket_drains_at_the_new_rate(
    redis: Redis,
) -> None:
    """The moved bucket is written even when nothing was admitted: read again from the old
    rate, it drained ten times faster at the retry, and refused it again for as long."""
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=10_000))
    await limiter.admit(principal, 5_000)  # half a window at 0.1 ms per token
    lowered = at_tpm(principal, 1_000)  # 1 ms per token: the bucket is full
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(lowered, 100)
    wait = int(refused.value.headers["retry-after-ms"])
    assert 90 <= wait <= 110
    await asyncio.sleep(wait / 1000 + 0.02)
    await limiter.admit(lowered, 100)


async def test_usage_settled_after_a_tpm_change_moves_the_bucket_at_its_rate(
    redis: Redis,
) -> None:
    """A request admitted at tpm 1,000 and settled after the tpm was raised to 100,000 gives
    back what it did not use at the rate the bucket is kept at now."""
    limiter, principal = Limiter(redis), who(Limits(tpm=1000))
    early = await limiter.admit(principal, 1000)
    raised = at_tpm(principal, 100_000)
    await limiter.admit(raised, 99_000)  # the minute is full at the new rate
    with pytest.raises(RateLimited):
        await limiter.admit(raised, 500)
    await settle(redis, principal, early, 10)  # used 10 of its 1,000
    await limiter.admit(raised, 900)  # 990 came back
    with pytest.raises(RateLimited):
        await limiter.admit(raised, 200)


async def test_a_reservation_settled_after_a_raised_tpm_gives_back_only_what_is_left_of_it(
    redis: Redis,
) -> None:
    """Found by review 2026-12-07: a request admitted before any change of its tpm gave back
    its whole unused reservation, part of which had drained already and been taken by others
    (raised by one token, 500 tokens of another request's were forgotten). What is left of it
    is counted in tokens at the rate it was admitted at."""
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=1200))
    early = await limiter.admit(principal, 1000)  # 833 ms of the bucket
    await asyncio.sleep(0.5)  # 600 of its tokens drained
    await limiter.admit(principal, 500)  # the bucket holds its 400 left and these 500
    raised = at_tpm(principal, 1201)
    await limiter.admit(raised, 1)
    await settle_in(redis, principal, early, 10, window_s=1.0)  # 400 come back, not 990
    with pytest.raises(RateLimited):
        await limiter.admit(raised, 900)  # 500 + 1 + 900 > 1,201


@pytest.mark.parametrize("ended", ["settled", "released"])
async def test_a_reservation_ended_after_a_lowered_tpm_gives_back_none(
    redis: Redis, ended: str
) -> None:
    """Lowered, the bucket keeps at most a window at the new rate of what it held: where a
    reservation from before lies in it is not known, and giving it back emptied a bucket
    still full at the new rate (6,000 tokens used, lowered to 1,000: room at once)."""
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=10_000))
    early = await limiter.admit(principal, 1000)
    await limiter.admit(principal, 5000)
    lowered = at_tpm(principal, 1000)
    with pytest.raises(RateLimited):
        await limiter.admit(lowered, 1)  # full at the new rate
    if ended == "settled":
        await settle_in(redis, principal, early, 10, window_s=1.0)  # used 10 of its 1,000
    else:  # its client was told the limiter was unavailable
        assert await limiter.release(principal, early.lease) == "refunded"
    with pytest.raises(RateLimited):
        await limiter.admit(lowered, 900)


async def test_a_release_after_a_tpm_change_gives_back_at_the_bucket_s_rate(
    redis: Redis,
) -> None:
    limiter, principal = Limiter(redis), who(Limits(tpm=1000))
    early = await limiter.admit(principal, 1000)
    raised = at_tpm(principal, 100_000)
    await limiter.admit(raised, 99_000)
    assert await limiter.release(principal, early.lease) == "refunded"
    await limiter.admit(raised, 900)
    with pytest.raises(RateLimited):
        await limiter.admit(raised, 200)


async def test_usage_above_the_reservation_is_charged_from_now(redis: Redis) -> None:
    """A request that used more than it reserved, settled once its reservation drained: the
    excess is charged as a new cost from now, not added to a TAT in the past (which let it
    go uncharged)."""
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=6000))
    admission = await limiter.admit(principal, 100)  # ~17 ms of the bucket
    await asyncio.sleep(0.2)  # drained
    await settle_in(redis, principal, admission, 1100, window_s=1.0)
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 5500)  # 1,000 of the 6,000 are used for a while
    await limiter.admit(principal, 4500)


async def test_a_reservation_that_drained_out_is_not_given_back_again(redis: Redis) -> None:
    """A request that outlived its reservation (a long stream, a settlement replayed after an
    outage) gives back none of it: it left the bucket as time passed, and a refund then made
    room nobody had taken (1,990 tokens admitted within a window of 1,000)."""
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=1000))
    long_one = await limiter.admit(principal, 1000)
    await asyncio.sleep(1.1)  # its reservation drained out
    await limiter.admit(principal, 1000)  # another request takes the whole window
    await settle_in(redis, principal, long_one, 10, window_s=1.0)  # used 10 of its 1,000
    with pytest.raises(RateLimited):
        await limiter.admit(principal, 500)


async def test_a_reservation_given_back_early_makes_its_room_at_once(redis: Redis) -> None:
    limiter, principal = Limiter(redis, window_s=1.0), who(Limits(tpm=1000))
    short_one = await limiter.admit(principal, 900)
    await settle_in(redis, principal, short_one, 100, window_s=1.0)  # used 100 of its 900
    await limiter.admit(principal, 850)  # what it did not use is there again


async def test_after_rpm_is_lowered_the_retry_waits_for_enough_entries_to_leave(
    redis: Redis,
) -> None:
    """At 10 entries a lowered limit of 5 has room once 6 of them left: the refusal says when
    the sixth leaves, not the first (a client that waited that long was refused again)."""
    limiter = Limiter(redis, window_s=1.0)
    principal = who(Limits(rpm=10))
    for _ in range(5):
        await limiter.admit(principal, 1)
    await asyncio.sleep(0.3)
    for _ in range(5):
        await limiter.admit(principal, 1)
    lowered = Principal(principal.tenant, "k", "api_key", key_limits=Limits(rpm=5))
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(lowered, 1)
    wait = int(refused.value.headers["retry-after-ms"])
    assert wait > 900  # the sixth came ~0.3 s after the first: ~1 s, not ~0.7
    await asyncio.sleep(wait / 1000 + 0.02)
    await limiter.admit(lowered, 1)


@pytest.mark.asyncio(loop_scope="session")
async def test_duration_format() -> None:
    assert [duration(ms) for ms in (17.2, 999, 1000, 1200, 59_500, 360_000)] == [
        "18ms",
        "999ms",
        "1s",
        "2s",
        "1m0s",
        "6m0s",
    ]


BOTH = {"key": Limits(rpm=5, tpm=10_000, max_concurrency=2), "tenant": Limits(rpm=5, tpm=20_000)}


async def charges(redis: Redis, principal: Principal) -> dict[str, object]:
    """What the limits of both scopes hold: request logs, leases, token buckets' TATs."""
    (key_rpm, key_tpm, key_leases), (tenant_rpm, tenant_tpm, tenant_leases) = scope_keys(
        principal.tenant, principal.key_id
    )
    return {
        "requests": [await redis.zcard(key_rpm), await redis.zcard(tenant_rpm)],
        "leases": [await redis.zcard(key_leases), await redis.zcard(tenant_leases)],
        "tat": [await redis.get(key_tpm), await redis.get(tenant_tpm)],
    }


def tats(state: dict[str, object]) -> list[float]:
    values = state["tat"]
    assert isinstance(values, list)
    return [tat_of(v) for v in values]


async def test_release_after_admit_gives_everything_back_once(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(BOTH["key"], BOTH["tenant"])
    await limiter.admit(principal, 3000)  # stays: the bucket is ahead of the clock
    before = await charges(redis, principal)
    admission = await limiter.admit(principal, 500)
    charged = await charges(redis, principal)
    assert charged["requests"] == [2, 2]
    assert charged["leases"] == [2, 0]  # no concurrency limit at the tenant scope
    moved = [b + 500 * 60_000 / tpm for b, tpm in zip(tats(before), (10_000, 20_000), strict=True)]
    assert tats(charged) == pytest.approx(moved, abs=1e-6)
    assert await limiter.release(principal, admission.lease) == "refunded"
    after = await charges(redis, principal)
    assert after["requests"] == [1, 1]
    assert after["leases"] == [1, 0]
    assert tats(after) == pytest.approx(tats(before), abs=1e-6)

    assert await limiter.release(principal, admission.lease) == "released"
    assert await charges(redis, principal) == after  # the second release gave nothing back


async def test_release_before_admit_cancels_the_admission(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(BOTH["key"], BOTH["tenant"])
    lease = new_lease()
    assert await limiter.release(principal, lease) == "cancelled"
    with pytest.raises(AdmissionCancelled):
        await limiter.admit(principal, 500, lease)  # it reached Redis after it was given up on
    assert await charges(redis, principal) == {
        "requests": [0, 0],
        "leases": [0, 0],
        "tat": [None, None],
    }
    assert await limiter.release(principal, lease) == "released"


async def test_the_same_lease_admitted_twice_charges_once(redis: Redis) -> None:
    limiter, principal = Limiter(redis), who(Limits(rpm=1, tpm=1000, max_concurrency=1))
    lease = new_lease()
    first = await limiter.admit(principal, 100, lease)
    again = await limiter.admit(principal, 100, lease)  # a retry after a lost reply
    assert again == Admission(lease, 100, None, None)  # admitted, no fresher figures to show
    assert first.requests == (1, 0, 60_000)
    state = await charges(redis, principal)
    assert state["requests"] == [1, 0]
    assert state["leases"] == [1, 0]
    with pytest.raises(RateLimited):  # a new lease is a new request
        await limiter.admit(principal, 100)


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_cancelled_admission_gets_the_failure_mode_not_a_500(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Admission control answers an already-released lease like an unavailable limiter (closed:
    503; open: admitted without limits), and it charged nothing."""
    limiter, principal = Limiter(redis), who(BOTH["key"], BOTH["tenant"])
    lease = new_lease()
    assert await limiter.release(principal, lease) == "cancelled"
    monkeypatch.setattr(control, "new_lease", lambda: lease)
    admission = AdmissionControl(
        limiter, LimitsSettings.model_validate({"failure_mode": mode}), Metrics()
    )
    try:
        if mode == "closed":
            with pytest.raises(ServiceUnavailable):
                await admission.admit(principal, {"messages": []})
        else:
            assert await admission.admit(principal, {"messages": []}) is None
    finally:
        await admission.close()
    assert (await charges(redis, principal))["requests"] == [0, 0]
