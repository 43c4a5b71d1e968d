"""Usage records and settlements for tests: sensible defaults, any field overridden by name;
and the records a ledger in Redis holds, read straight from it (not through the gateway)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

from redis.asyncio import Redis

from gateway.metering.ledger import log_key
from gateway.metering.record import UsageRecord, new_record_id
from gateway.metering.settlement import LimitSettlement, Settlement


def usage_record(**fields: Any) -> UsageRecord:
    """A completed streamed chat request of tenant t, key k1, model m, with a fresh id, now."""
    record = UsageRecord(
        id=new_record_id(),
        request_id="req-1",
        time_ms=int(time.time() * 1000),
        tenant="t",
        key_id="k1",
        model="m",
        route="chat/completions",
        engine="http://e:8000",
        stream=True,
        outcome="ok",
        status=200,
        prompt_tokens=10,
        completion_tokens=5,
        cached_tokens=3,
        latency_ms=123.25,
        ttft_ms=12.5,
    )
    return dataclasses.replace(record, **fields)


def settlement_of(record: UsageRecord, limits: LimitSettlement | None = None) -> Settlement:
    return Settlement(record.id, record.tenant, record.key_id, record, limits)


async def ledger_records(redis_url: str, tenant: str) -> list[UsageRecord]:
    """`tenant`'s usage records in the ledger at `redis_url`, oldest first."""
    redis = Redis.from_url(redis_url)
    try:
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(log_key(tenant))
        )
    finally:
        await redis.aclose()
    return [UsageRecord.from_fields(fields) for _, fields in entries]
