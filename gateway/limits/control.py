"""Admission on the request path: reserve before proxying, settle when the answer is done."""

from __future__ import annotations

import asyncio
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
    def __init__(
        self, limiter: Limiter | None, settings: LimitsSettings, metrics: Metrics, timeout_s: float
    ) -> None:
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.log = logging.getLogger("llmaas.limits")

    async def admit(self, caller: Principal, body: dict[str, Any]) -> Admission | None:
        """None when nothing limits this caller (no Redis round trip) or when failing open."""
        if self.limiter is None or (caller.key_limits == _NONE and caller.tenant_limits == _NONE):
            return None
        tokens = reserved_tokens(body, self.settings.default_max_tokens)
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

    async def settle(self, caller: Principal, admission: Admission, used: int | None) -> None:
        """Charge real usage (None: keep the reservation) and free the slot; never raises."""
        if self.limiter is None:
            return
        real = admission.reserved_tokens if used is None else used
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                await self.limiter.settle(caller, admission, real)
        except (RedisError, OSError, TimeoutError) as exc:
            # The lease expires by itself; the token difference is lost (metering's retry queue
            # will carry settlements through Redis outages).
            self.log.warning("settlement failed", extra={"fields": {"error": type(exc).__name__}})
