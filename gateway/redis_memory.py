"""Redis's memory beside its `maxmemory`, for the operator: the ledger's records and daily
totals grow with traffic (docs/deploy.md, "Sizing Redis"), and past maxmemory Redis refuses
writes: limited requests get `limits.failure_mode`, usage waits in the gateway. Nothing
showed it coming (the chart ships no Redis exporter); each gateway reads `INFO memory` every
`interval_s` into two gauges, which LlmaasRedisMemoryHigh divides.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.redis_client import redis_error

log = logging.getLogger("llmaas.redis")
INTERVAL_S = 30.0


async def watch_redis_memory(
    redis: Redis, metrics: Metrics, interval_s: float = INTERVAL_S
) -> None:
    """Until cancelled: the gauges set from INFO memory; a failed read leaves them as they were
    (Redis away is told by the limiter's and the ledger's own metrics)."""
    while True:
        try:
            info = await redis.info("memory")
        except (RedisError, OSError) as exc:
            log.debug("INFO memory failed: %s", redis_error(exc))
        else:
            metrics.redis_memory_used.set(float(info.get("used_memory", 0)))
            metrics.redis_maxmemory.set(float(info.get("maxmemory", 0)))
        await asyncio.sleep(interval_s)
