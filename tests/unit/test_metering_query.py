"""gateway/metering/query.py against a real Redis: which tenants a usage query reads, the set
of tenants with usage pruned with the retention, the set of older gateways moved over, and
pages merged across many tenants' logs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from redis.asyncio import Redis

from gateway.metering.ledger import DAY_MS, LEGACY_TENANTS, TENANTS, TENANTS_FIRST, Ledger, log_key
from gateway.metering.query import Cursor, UsageFilter, records_page, usage_totals
from gateway.metering.record import UsageRecord
from gateway.settings import MeteringSettings
from tests.support.usage_records import settlement_of, usage_record

pytestmark = pytest.mark.asyncio(loop_scope="session")
RETENTION_MS = 35 * DAY_MS
EVERYONE = UsageFilter()


async def write(redis: Redis, *tenants: str, prompt: int = 10) -> list[UsageRecord]:
    records = [usage_record(tenant=t, prompt_tokens=prompt) for t in tenants]
    await Ledger(redis, MeteringSettings(), window_s=60.0).write(
        [settlement_of(r) for r in records]
    )
    return records


async def calls(redis: Redis, command: str) -> int:
    """How many times Redis ran `command` since its statistics were last reset."""
    stats = cast("dict[str, dict[str, int]]", await redis.info("commandstats"))
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


async def page_all(redis: Redis, *, limit: int, scan: int) -> list[UsageRecord]:
    out: list[UsageRecord] = []
    after: Cursor | None = None
    while True:
        page, after = await records_page(
            redis,
            EVERYONE,
            start_ms=None,
            end_ms=None,
            after=after,
            limit=limit,
            retention_ms=RETENTION_MS,
            scan=scan,
        )
        out += page
        if after is None:
            return out


async def test_queries_read_only_the_tenants_with_usage_in_their_range(redis: Redis) -> None:
    await redis.flushall()
    idle = [f"idle{i}" for i in range(150)]
    await write(redis, *idle)
    ten_days_ago = int(time.time() * 1000) - 10 * DAY_MS  # their last write, as if long ago
    await redis.zadd(TENANTS, dict.fromkeys(idle, ten_days_ago))
    [busy] = await write(redis, "busy", prompt=7)
    today = datetime.now(UTC).date()
    start_ms = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000)

    await redis.config_resetstat()
    rows = await usage_totals(redis, EVERYONE, today, today, ("tenant",), retention_ms=RETENTION_MS)
    assert await calls(redis, "hgetall") == 1  # not one per tenant that ever had usage
    assert [(r["tenant"], r["prompt_tokens"]) for r in rows] == [("busy", 7)]

    await redis.config_resetstat()
    page, _ = await records_page(
        redis,
        EVERYONE,
        start_ms=start_ms,
        end_ms=None,
        after=None,
        limit=10,
        retention_ms=RETENTION_MS,
    )
    assert page == [busy]
    assert await calls(redis, "xrange") == 1

    # Without a start, every tenant kept is read: the idle ones' records are still there.
    everything = await page_all(redis, limit=1000, scan=2000)
    assert len(everything) == 151


async def test_a_tenant_idle_past_the_retention_leaves_the_set(redis: Redis) -> None:
    await redis.flushall()
    await write(redis, "gone", "kept")
    long_ago = int(time.time() * 1000) - RETENTION_MS - 3 * DAY_MS
    await redis.zadd(TENANTS, {"gone": long_ago})

    records = await page_all(redis, limit=100, scan=2000)
    assert {r.tenant for r in records} == {"kept"}
    assert await redis.zscore(TENANTS, "gone") is None
    assert await redis.zscore(TENANTS_FIRST, "gone") is None
    assert await redis.zscore(TENANTS, "kept") is not None
    assert await redis.zscore(TENANTS_FIRST, "kept") is not None


async def test_the_set_of_gateways_before_is_moved_over(redis: Redis) -> None:
    await redis.flushall()
    [old] = await write(redis, "old")
    await redis.delete(TENANTS)
    await redis.sadd(LEGACY_TENANTS, "old")  # as a gateway of before 2026-12-06 left it

    today = datetime.now(UTC).date()
    rows = await usage_totals(redis, EVERYONE, today, today, ("tenant",), retention_ms=RETENTION_MS)
    assert [r["tenant"] for r in rows] == ["old"]
    assert await redis.exists(LEGACY_TENANTS) == 0
    assert await redis.zscore(TENANTS, "old") is not None
    assert await page_all(redis, limit=10, scan=2000) == [old]


async def test_pages_merge_many_tenants_in_ledger_order(redis: Redis) -> None:
    await redis.flushall()
    written: list[UsageRecord] = []
    for round_ in range(3):  # each tenant's log gets three records, interleaved with the others'
        written += await write(redis, *[f"t{i:02}" for i in range(40)], prompt=round_ + 1)
    entries: list[tuple[tuple[int, int], str, UsageRecord]] = []
    for tenant in {r.tenant for r in written}:
        log = await redis.xrange(log_key(tenant))
        for entry_id, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", log):
            ms, _, seq = entry_id.decode().partition("-")
            entries.append(((int(ms), int(seq)), tenant, UsageRecord.from_fields(fields)))
    expected = [record for *_, record in sorted(entries)]
    assert len(expected) == 120

    # A scan of 20 entries a page gives each of 40 logs a chunk of 1: every pop reads again.
    assert await page_all(redis, limit=7, scan=20) == expected
    assert await page_all(redis, limit=1000, scan=2000) == expected


async def test_a_range_before_a_tenants_last_write_still_finds_it(redis: Redis) -> None:
    await redis.flushall()
    await write(redis, "steady")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    rows = await usage_totals(
        redis,
        EVERYONE,
        yesterday,
        yesterday + timedelta(days=1),
        ("tenant",),
        retention_ms=RETENTION_MS,
    )
    assert [(r["tenant"], r["requests"]) for r in rows] == [("steady", 1)]


async def test_totals_skip_the_days_before_a_tenants_first_record(redis: Redis) -> None:
    await redis.flushall()
    await write(redis, "newcomer")
    today = datetime.now(UTC).date()
    await redis.config_resetstat()
    rows = await usage_totals(
        redis,
        EVERYONE,
        today - timedelta(days=30),
        today,
        ("tenant",),
        retention_ms=RETENTION_MS,
    )
    assert [(r["tenant"], r["requests"]) for r in rows] == [("newcomer", 1)]
    assert await calls(redis, "hgetall") <= 3  # its first day, a day of slack either side


async def test_a_tenant_moved_over_keeps_its_days_before_a_write_of_today(redis: Redis) -> None:
    """Its first write through a gateway of today set its first record to today: totals over
    every tenant skipped its earlier days (billed low for the month of the upgrade)."""
    await redis.flushall()
    ten_days_ago = int(time.time() * 1000) - 10 * DAY_MS
    earlier = usage_record(tenant="upgraded", time_ms=ten_days_ago, prompt_tokens=5)
    await Ledger(redis, MeteringSettings(), window_s=60.0).write([settlement_of(earlier)])
    await redis.delete(TENANTS, TENANTS_FIRST)  # as a gateway of before 2026-12-06 left it
    await redis.sadd(LEGACY_TENANTS, "upgraded")
    await write(redis, "upgraded", prompt=7)  # a gateway of today, before any query
    day = datetime.fromtimestamp(ten_days_ago / 1000, UTC).date()
    rows = await usage_totals(redis, EVERYONE, day, day, ("tenant",), retention_ms=RETENTION_MS)
    assert [(r["tenant"], r["prompt_tokens"]) for r in rows] == [("upgraded", 5)]
    assert await redis.zscore(TENANTS_FIRST, "upgraded") == 0
