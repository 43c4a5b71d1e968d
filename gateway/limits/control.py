"""Admission on the request path: reserve before proxying (gateway/metering settles after)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from redis.exceptions import RedisError

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.limits.estimate import reserved_tokens
from gateway.limits.limiter import Admission, Limiter
from gateway.metrics import Metrics
from gateway.settings import LimitsSettings

_NONE = Limits()


class AdmissionControl:
    def __init__(self, limiter: Limiter | None, settings: LimitsSettings, metrics: Metrics) -> None:
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = settings.timeout_s
        self.key_defaults = Limits(**settings.key_defaults.model_dump())
        self.tenant_defaults = Limits(**settings.tenant_defaults.model_dump())
        self.log = logging.getLogger("llmaas.limits")

    def with_defaults(self, caller: Principal) -> Principal:
        """The caller's limits, with configured defaults where its records set none."""
        key = _merge(caller.key_limits, self.key_defaults)
        tenant = _merge(caller.tenant_limits, self.tenant_defaults)
        if key == caller.key_limits and tenant == caller.tenant_limits:
            return caller
        return dataclasses.replace(caller, key_limits=key, tenant_limits=tenant)

    async def admit(
        self, caller: Principal, body: dict[str, Any], context_length: int | None = None
    ) -> Admission | None:
        """None when nothing limits this caller (no Redis round trip) or when failing open."""
        if self.limiter is None or (caller.key_limits == _NONE and caller.tenant_limits == _NONE):
            return None
        tokens = reserved_tokens(body, self.settings.default_max_tokens, context_length)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.limiter.admit(caller, tokens)
        except RateLimited as refusal:
            self.metrics.ratelimit_rejections.labels(
                caller.tenant, refusal.scope, refusal.limit_kind
            ).inc()
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.ratelimit_unavailable.labels(self.settings.failure_mode).inc()
            self.log.warning(
                "rate limiter unreachable", extra={"fields": {"error": type(exc).__name__}}
            )
            if self.settings.failure_mode == "open":
                return None
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; try again shortly.",
                code="rate_limiter_unavailable",
            ) from exc


def _merge(own: Limits, defaults: Limits) -> Limits:
    return Limits(
        own.rpm if own.rpm is not None else defaults.rpm,
        own.tpm if own.tpm is not None else defaults.tpm,
        own.max_concurrency if own.max_concurrency is not None else defaults.max_concurrency,
    )
