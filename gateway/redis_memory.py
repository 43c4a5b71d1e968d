"""Redis's memory beside its `maxmemory`, for the operator: the ledger's records and daily
totals grow with traffic (docs/deploy.md, "Sizing Redis"), and past maxmemory Redis refuses
writes: limited requests get `limits.failure_mode`, usage waits in the gateway. Nothing
showed it coming (the chart ships no Redis exporter); each gateway reads `INFO memory` every
`interval_s` into two gauges, which LlmaasRedisMemoryHigh divides.

The same read tells Redis's `maxmemory-policy`: anything but noeviction lets Redis evict the
gateway's keys without a word (volatile-lru, many managed services' default, took settlement
de-dup markers, usage logs and daily totals; allkeys-lru took API keys too). It is logged once
per change and kept in a gauge for LlmaasRedisMayEvict. And the ledger's id is put back if
Redis lost it (ledger.py logs that): with every key gone no request is settled, so no write
would have noticed. A user whose ACL refuses INFO (`-@dangerous`, a common least privilege)
is told once: Redis answered, so llmaas_redis_up is 1, but nothing here can be watched. And
credentials Redis refuses (a password changed, an ACL user gone, while the gateway runs) are
said once, with Redis's words: the rest of the log said only the outage's first "Connection
refused", and requests failed with no line.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from gateway.metering.ledger import Ledger
from gateway.metrics import Metrics
from gateway.redis_client import redis_error

log = logging.getLogger("llmaas.redis")
INTERVAL_S = 30.0
SAFE_POLICY = "noeviction"


async def watch_redis_memory(
    redis: Redis,
    metrics: Metrics,
    ledger: Ledger | None = None,
    interval_s: float = INTERVAL_S,
) -> None:
    """Until cancelled: the gauges set from INFO memory; a failed read leaves them as they were
    and sets llmaas_redis_up to 0 (LlmaasRedisUnreachable: a Redis away while nothing needs it
    moved no other metric, the limiter's and the ledger's own counting only what fails)."""
    policy: str | None = None  # as last read
    refused = False  # INFO refused to the gateway's user (an ACL without it): logged once
    denied = False  # the gateway's credentials refused (a password changed, a user gone)
    while True:
        try:
            info = await redis.info("memory")
        except NoPermissionError as exc:  # answered: Redis is up, only INFO is not allowed
            metrics.redis_up.set(1.0)
            if not refused:
                log.warning(
                    "Redis refuses INFO to the gateway's user (its ACL): Redis's memory and "
                    "maxmemory-policy go unwatched (llmaas_redis_memory_used_bytes and "
                    "llmaas_redis_may_evict stay 0, their alerts cannot fire); allow +info",
                    extra={"fields": {"error": redis_error(exc)}},
                )
            refused = True
        except (RedisError, OSError) as exc:
            log.debug("INFO memory failed: %s", redis_error(exc))
            metrics.redis_up.set(0.0)
            if isinstance(exc, AuthenticationError) and not denied:
                log.warning(
                    "Redis refuses the gateway's credentials (redis_password, the user in "
                    "redis_url): every request that needs Redis fails until they match again",
                    extra={"fields": {"error": redis_error(exc)}},
                )
            denied = isinstance(exc, AuthenticationError)
        else:
            metrics.redis_up.set(1.0)
            if denied:
                log.info("Redis accepts the gateway's credentials again")
                denied = False
            if refused:
                log.info("Redis allows INFO again: its memory and maxmemory-policy are watched")
                refused = False
            metrics.redis_memory_used.set(float(info.get("used_memory", 0)))
            metrics.redis_maxmemory.set(float(info.get("maxmemory", 0)))
            policy = _policy_seen(str(info.get("maxmemory_policy", SAFE_POLICY)), policy, metrics)
        if ledger is not None:
            await _keep_identity(ledger)
        await asyncio.sleep(interval_s)


async def _keep_identity(ledger: Ledger) -> None:
    """A failure is told elsewhere, as INFO's (and a full Redis refuses the SET: no matter)."""
    try:
        await ledger.keep_identity()
    except (RedisError, OSError) as exc:
        log.debug("ledger id check failed: %s", redis_error(exc))


def _policy_seen(policy: str, before: str | None, metrics: Metrics) -> str:
    """Set the gauge; log a policy that may evict once, not every read, and its end."""
    metrics.redis_may_evict.set(0.0 if policy == SAFE_POLICY else 1.0)
    if policy not in (before, SAFE_POLICY):
        log.warning(
            "Redis may evict the gateway's keys: its maxmemory-policy is not noeviction (API "
            "keys, tenants, usage records and totals can be lost silently); set noeviction",
            extra={"fields": {"maxmemory_policy": policy}},
        )
    elif policy != before and before is not None:
        log.info("Redis's maxmemory-policy is noeviction again")
    return policy
