"""gateway/metering/ledger.py and settle.lua against a real Redis: records, daily totals, limit
settlement, idempotency."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited
from gateway.limits.limiter import Limiter, scope_keys
from gateway.metering.ledger import (
    GROUP_MAX,
    METRICS,
    TENANTS,
    Ledger,
    day_field,
    day_key,
    log_key,
    usage_prefix,
)
from gateway.metering.query import UsageFilter, usage_totals
from gateway.metering.record import FINE_TUNE_ROUTE, UsageRecord, new_record_id
from gateway.metering.settlement import LimitSettlement, Settlement, lease_release
from gateway.settings import MeteringSettings
from tests.support.usage_records import settlement_of as settlement
from tests.support.usage_records import usage_record

pytestmark = pytest.mark.asyncio(loop_scope="session")
_tenants = count()
WINDOW_S = 3600.0  # a long "minute": buckets barely refill while a test runs
DAY_MS = 86_400_000


def tenant() -> str:
    return f"lt{next(_tenants)}"


def record(
    tenant: str, *, prompt: int = 10, completion: int = 5, cached: int = 3, **fields: Any
) -> UsageRecord:
    return usage_record(
        tenant=tenant,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        **fields,
    )


def ledger(redis: Redis) -> Ledger:
    return Ledger(redis, MeteringSettings(), window_s=WINDOW_S)


async def log_of(redis: Redis, tenant: str) -> list[UsageRecord]:
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(log_key(tenant)))
    return [UsageRecord.from_fields(fields) for _, fields in entries]


async def day_of(redis: Redis, tenant: str, day: str) -> dict[tuple[str, str, str], int]:
    raw = cast("dict[bytes, bytes]", await redis.hgetall(day_key(tenant, day)))
    return {tuple(orjson.loads(k)): int(v) for k, v in raw.items()}


def totals(key_id: str, model: str, *counts: int) -> dict[tuple[str, str, str], int]:
    """Daily hash fields of one key and model: requests, prompt, completion, cached tokens."""
    return {(key_id, model, metric): n for metric, n in zip(METRICS, counts, strict=True)}


async def test_a_settlement_writes_one_record_and_the_daily_totals(redis: Redis) -> None:
    t = tenant()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight_ms = int(today.timestamp() * 1000)
    yesterday = (today - timedelta(days=1)).strftime("%Y-%m-%d")
    rec = record(t, time_ms=midnight_ms - 1)  # the last millisecond of yesterday (UTC)
    await ledger(redis).write([settlement(rec)])

    assert await log_of(redis, t) == [rec]
    assert await day_of(redis, t, yesterday) == totals("k1", "m", 1, 10, 5, 3)
    assert await redis.zscore(TENANTS, t) is not None  # its last write, for admin queries
    assert await redis.exists(day_key(t, today.strftime("%Y-%m-%d"))) == 0
    retention_ms = int(MeteringSettings().retention_days * DAY_MS)
    # The day hash lives until the end of its day plus the retention, the log for the retention.
    ttl = await redis.pttl(day_key(t, yesterday))
    expected = midnight_ms + retention_ms - int(time.time() * 1000)
    assert abs(ttl - expected) < 5_000
    assert retention_ms - 5_000 < await redis.pttl(log_key(t)) <= retention_ms


async def test_one_ledger_keeps_each_utc_day_apart(redis: Redis) -> None:
    """What the ledger makes once per key, model and day (keys, fields, the day's expiry) is
    never carried over to the next day, by the same ledger, in one batch or the next."""
    t, write = tenant(), ledger(redis)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight_ms = int(today.timestamp() * 1000)
    days = [(today - timedelta(days=1)).strftime("%Y-%m-%d"), today.strftime("%Y-%m-%d")]
    await write.write([settlement(record(t, time_ms=midnight_ms - 1, prompt=1))])
    await write.write(
        [
            settlement(record(t, time_ms=midnight_ms, prompt=2)),
            settlement(record(t, time_ms=midnight_ms - 2, prompt=4)),
            settlement(record(t, time_ms=midnight_ms + 1, prompt=8, model="m2")),
        ]
    )
    assert await day_of(redis, t, days[0]) == totals("k1", "m", 2, 5, 10, 6)
    assert await day_of(redis, t, days[1]) == {
        **totals("k1", "m", 1, 2, 5, 3),
        **totals("k1", "m2", 1, 8, 5, 3),
    }
    ttls = [await redis.pttl(day_key(t, day)) for day in days]
    assert abs(ttls[1] - ttls[0] - DAY_MS) < 5_000  # each expires a retention after its own day


async def test_records_round_trip_through_from_fields(redis: Redis) -> None:
    t = tenant()
    records = [
        record(t),
        record(t, key_id="k:2", model="org/model-7b", ttft_ms=None, cached=0),
        record(t, prompt=0, completion=0, cached=0, ttft_ms=0.0),
    ]
    records[1] = UsageRecord(**{**records[1].as_dict(), "stream": False, "outcome": "rejected"})
    await ledger(redis).write([settlement(r) for r in records])
    logged = {r.id: r for r in await log_of(redis, t)}  # a batch is logged key by key
    got = [logged[r.id] for r in records]
    assert got == records
    assert len(logged) == 3
    assert got[1].ttft_ms is None
    assert got[1].stream is False
    assert got[2].ttft_ms == 0.0
    assert got[0].view()["total_tokens"] == 15


async def test_totals_add_up_per_key_and_model(redis: Redis) -> None:
    t = tenant()
    now = int(time.time() * 1000)
    day = datetime.fromtimestamp(now / 1000, UTC).strftime("%Y-%m-%d")
    batch = [
        settlement(record(t, time_ms=now, prompt=10, completion=1, cached=0)),
        settlement(record(t, time_ms=now, prompt=20, completion=2, cached=4)),
        settlement(record(t, time_ms=now, key_id="k2", prompt=7, completion=0, cached=0)),
        settlement(record(t, time_ms=now, model="m2", prompt=1, completion=1, cached=1)),
    ]
    await ledger(redis).write(batch)
    assert await day_of(redis, t, day) == {
        **totals("k1", "m", 2, 30, 3, 4),
        **totals("k2", "m", 1, 7, 0, 0),
        **totals("k1", "m2", 1, 1, 1, 1),
    }
    assert (await redis.hgetall(day_key(t, day)))[day_field("k1", "m", "requests").encode()] == b"2"
    assert len(await log_of(redis, t)) == 4


async def test_a_fine_tuning_jobs_trained_tokens_are_totalled_apart(redis: Redis) -> None:
    """Training is not inference: its tokens went into the model's prompt tokens, and the job
    counted as a request (found by an outside tester; billing tells them apart)."""
    t = tenant()
    now = int(time.time() * 1000)
    day = datetime.fromtimestamp(now / 1000, UTC).strftime("%Y-%m-%d")
    batch = [
        settlement(record(t, time_ms=now, prompt=99, completion=20, cached=0)),
        settlement(
            record(t, time_ms=now, route=FINE_TUNE_ROUTE, prompt=1424, completion=0, cached=0)
        ),
    ]
    await ledger(redis).write(batch)
    assert await day_of(redis, t, day) == {
        **totals("k1", "m", 1, 99, 20, 0),
        ("k1", "m", "fine_tune_jobs"): 1,
        ("k1", "m", "trained_tokens"): 1424,
    }
    on = date.fromisoformat(day)
    [row] = await usage_totals(
        redis, UsageFilter(tenant=t), on, on, ("tenant", "model"), retention_ms=35 * DAY_MS
    )
    assert row == {
        "tenant": t, "model": "m", "requests": 1, "prompt_tokens": 99, "completion_tokens": 20,
        "cached_tokens": 0, "total_tokens": 119, "fine_tune_jobs": 1, "trained_tokens": 1424,
    }  # fmt: skip


async def test_a_batch_longer_than_a_group_and_repeats_within_it(redis: Redis) -> None:
    """A key's settlements go GROUP_MAX to a script call, in order; one repeated in the same
    batch (the same call or a later one) counts once."""
    t, book = tenant(), ledger(redis)
    now = int(time.time() * 1000)
    records = [record(t, time_ms=now, prompt=i) for i in range(2 * GROUP_MAX + 5)]
    batch = [settlement(r) for r in records]
    batch += [batch[0], batch[-1], batch[-1]]
    assert [command[0] for command in book.commands(batch)] == ["EVALSHA"] * 3 + ["ZADD"] * 2
    await book.write(batch)
    assert [r.id for r in await log_of(redis, t)] == [r.id for r in records]
    n = len(records)
    assert await day_of(redis, t, records[0].day) == totals(
        "k1", "m", n, sum(range(n)), 5 * n, 3 * n
    )


async def test_writing_again_changes_nothing(redis: Redis) -> None:
    t = tenant()
    one, two = record(t), record(t, prompt=100)
    first, second = settlement(one), settlement(two)
    book = ledger(redis)
    await book.write([first])
    await book.write([first])
    await book.write([first, second])
    await book.write([first, second])
    await ledger(redis).write([second, first])  # another ledger (another gateway) too
    assert [r.id for r in await log_of(redis, t)] == [first.id, second.id]
    assert await day_of(redis, t, one.day) == totals("k1", "m", 2, 110, 10, 6)
    seen = await redis.pttl(f"{usage_prefix(t)}:seen:{first.id}")
    window_ms = MeteringSettings().dedupe_window_s * 1000
    assert window_ms - 60_000 < seen <= window_ms


async def test_an_empty_batch_writes_nothing(redis: Redis) -> None:
    before = await redis.dbsize()
    await ledger(redis).write([])
    assert await redis.dbsize() == before


def who(key: Limits, tenant_limits: Limits | None = None) -> Principal:
    return Principal(
        tenant=tenant(),
        key_id="k",
        source="api_key",
        key_limits=key,
        tenant_limits=tenant_limits or Limits(),
    )


def limit_settlement(principal: Principal, lease: str, delta: int) -> Settlement:
    limits = LimitSettlement(
        lease, delta, principal.key_limits.tpm or 0, principal.tenant_limits.tpm or 0
    )
    return Settlement(new_record_id(), principal.tenant, principal.scope_id, None, limits)


async def remaining_tokens(limiter: Limiter, principal: Principal) -> tuple[int | None, ...]:
    """Tokens left at the key and the tenant scope (None: no tpm there), as a 0-token admission
    reports them."""
    key, tenant = principal.key_limits, principal.tenant_limits
    out: list[int | None] = []
    for only in (  # tokens only: no lease taken, no request counted
        Principal(principal.tenant, principal.key_id, "api_key", key_limits=Limits(tpm=key.tpm)),
        Principal(
            principal.tenant, principal.key_id, "api_key", tenant_limits=Limits(tpm=tenant.tpm)
        ),
    ):
        admission = await limiter.admit(only, 0)
        out.append(None if admission.tokens is None else admission.tokens[1])
    return tuple(out)


async def test_limits_only_settlement_moves_the_buckets_and_releases_the_lease(
    redis: Redis,
) -> None:
    limiter = Limiter(redis, window_s=WINDOW_S)
    principal = who(Limits(tpm=1000, max_concurrency=1), Limits(tpm=2000))
    admission = await limiter.admit(principal, 300)
    assert await remaining_tokens(limiter, principal) == (700, 1700)
    with pytest.raises(RateLimited, match="in flight"):
        await limiter.admit(principal, 1)
    (_, _, key_leases), _ = scope_keys(principal.tenant, principal.key_id)
    assert await redis.zscore(key_leases, admission.lease) is not None

    refund = limit_settlement(principal, admission.lease, 100 - 300)  # used 100 of 300
    await ledger(redis).write([refund])
    assert await redis.zscore(key_leases, admission.lease) is None
    assert await remaining_tokens(limiter, principal) == (900, 1900)
    assert await redis.exists(log_key(principal.tenant)) == 0  # no record, no log
    assert await redis.zscore(TENANTS, principal.tenant) is None

    await ledger(redis).write([refund])  # idempotent: not refunded twice
    assert await remaining_tokens(limiter, principal) == (900, 1900)

    second = await limiter.admit(principal, 100)  # the released slot is free again
    await ledger(redis).write([limit_settlement(principal, second.lease, 400)])  # used 500
    assert await remaining_tokens(limiter, principal) == (400, 1400)
    await limiter.admit(principal, 0)  # and released once more


async def test_a_refund_larger_than_the_charge_empties_the_bucket(redis: Redis) -> None:
    limiter = Limiter(redis, window_s=WINDOW_S)
    principal = who(Limits(tpm=1000))
    admission = await limiter.admit(principal, 300)
    await ledger(redis).write([limit_settlement(principal, admission.lease, -10_000)])
    (_, key_tpm, _), _ = scope_keys(principal.tenant, principal.key_id)
    assert await redis.exists(key_tpm) == 0
    assert await remaining_tokens(limiter, principal) == (1000, None)


async def test_one_keys_settlements_in_one_call_apply_in_order(redis: Redis) -> None:
    """Settlements of one key in a batch share one script call, yet each moves the buckets as
    it would alone: a refund that empties the bucket is not netted against a later charge."""
    limiter = Limiter(redis, window_s=WINDOW_S)
    principal = who(Limits(tpm=1000, max_concurrency=3))
    leases = [(await limiter.admit(principal, 100)).lease for _ in range(3)]
    assert await remaining_tokens(limiter, principal) == (700, None)
    batch = [
        limit_settlement(principal, leases[0], -10_000),  # empties the bucket
        limit_settlement(principal, leases[1], 50),  # charges 50 from empty
        limit_settlement(principal, leases[2], 0),
    ]
    book = ledger(redis)
    assert len(book.commands(batch)) == 1
    await book.write(batch)
    assert await remaining_tokens(limiter, principal) == (950, None)  # netted: 1000
    (_, _, key_leases), (_, _, tenant_leases) = scope_keys(principal.tenant, principal.key_id)
    assert await redis.zcard(key_leases) == 0
    assert await redis.exists(tenant_leases) == 0


async def test_record_and_limits_in_one_settlement(redis: Redis) -> None:
    limiter = Limiter(redis, window_s=WINDOW_S)
    principal = who(Limits(tpm=1000, max_concurrency=1))
    admission = await limiter.admit(principal, 50)
    rec = record(principal.tenant, key_id=principal.key_id, prompt=40, completion=30)
    limits = LimitSettlement(admission.lease, rec.total_tokens - 50, 1000, 0)
    await ledger(redis).write([settlement(rec, limits)])
    assert await log_of(redis, principal.tenant) == [rec]
    assert await remaining_tokens(limiter, principal) == (1000 - 70, None)
    await limiter.admit(principal, 0)  # the lease was released


async def test_a_flushed_script_cache_is_reloaded(redis: Redis) -> None:
    t = tenant()
    book = ledger(redis)
    await book.write([settlement(record(t))])
    await redis.script_flush()
    assert await redis.script_exists(book.settle.sha) == [False]
    later = settlement(record(t))
    await book.write([later, settlement(record(t))])
    assert len(await log_of(redis, t)) == 3
    assert await redis.script_exists(book.settle.sha) == [True]
    await book.write([later])  # and still idempotent after the reload
    assert len(await log_of(redis, t)) == 3


async def test_a_lease_release_frees_the_slot_once_and_moves_no_bucket(redis: Redis) -> None:
    """What a process that stopped with a release Redis had not taken settles instead."""
    limiter = Limiter(redis, window_s=WINDOW_S)
    principal = who(Limits(tpm=1000, max_concurrency=1))
    admission = await limiter.admit(principal, 300)
    with pytest.raises(RateLimited, match="in flight"):
        await limiter.admit(principal, 1)
    release = lease_release(principal.tenant, principal.scope_id, admission.lease)
    await ledger(redis).write([Settlement.from_json(release.to_json())])  # as replayed
    await ledger(redis).write([release])  # once only
    assert await remaining_tokens(limiter, principal) == (700, None)  # left to the window
    assert await redis.exists(log_key(principal.tenant)) == 0  # no usage record
    assert (await limiter.admit(principal, 1)).lease  # the slot is free again
