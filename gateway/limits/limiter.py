"""The typed wrapper around admission.lua.

One EVALSHA admits a request against every limit of the key and its tenant; settling it (token
refund or charge, lease release) is part of writing its usage (gateway/metering/settle.lua).
Results render OpenAI's x-ratelimit-* headers, and a refusal is OpenAI's 429 with Retry-After.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited

_SCRIPTS = Path(__file__).parent
SCOPES = ("key", "tenant")


def scope_keys(tenant: str, key_id: str) -> tuple[list[str], list[str]]:
    """Redis keys (rpm, tpm, leases) of the key scope and of the tenant scope."""
    tag = f"llmaas:{{t:{tenant}}}"
    key_scope = f"{tag}:k:{key_id}"
    return (
        [f"{key_scope}:rpm", f"{key_scope}:tpm", f"{key_scope}:leases"],
        [f"{tag}:rpm", f"{tag}:tpm", f"{tag}:leases"],
    )


def _limit_args(limits: Limits) -> list[int]:
    return [limits.rpm or 0, limits.tpm or 0, limits.max_concurrency or 0]


def duration(ms: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s."""
    if ms < 1000:
        return f"{max(0, math.ceil(ms))}ms"
    seconds = math.ceil(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


@dataclass(frozen=True, slots=True)
class Admission:
    lease: str
    reserved_tokens: int
    requests: tuple[int, int, float] | None  # limit, remaining, reset ms (tightest scope)
    tokens: tuple[int, int, float] | None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, values in (("requests", self.requests), ("tokens", self.tokens)):
            if values is not None:
                limit, remaining, reset = values
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
                out[f"x-ratelimit-reset-{kind}"] = duration(reset)
        return out


def _triple(limit: bytes, remaining: bytes, reset: bytes) -> tuple[int, int, float] | None:
    if not limit:
        return None
    return int(float(limit)), int(float(remaining)), float(reset)


class Limiter:
    def __init__(self, redis: Redis, lease_ttl_s: float = 120.0, window_s: float = 60.0) -> None:
        """`window_s` is the "minute" of rpm and tpm; tests shorten it, production keeps 60."""
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.window_ms = int(window_s * 1000)
        self._admit = redis.register_script((_SCRIPTS / "admission.lua").read_text())

    async def admit(self, principal: Principal, tokens: int) -> Admission:
        """Charge every limit of both scopes, or none; RateLimited names the one that refused."""
        key_keys, tenant_keys = scope_keys(principal.tenant, principal.key_id)
        lease = secrets.token_hex(8)
        args: list[str | int] = [tokens, lease, self.lease_ttl_ms, self.window_ms]
        args += _limit_args(principal.key_limits) + _limit_args(principal.tenant_limits)
        reply = await self._admit(keys=key_keys + tenant_keys, args=args)
        if int(reply[0]) == 1:
            return Admission(lease, tokens, _triple(*reply[1:4]), _triple(*reply[4:7]))
        raise _refusal(reply, tokens)


def _refusal(reply: list[bytes], tokens: int) -> RateLimited:
    scope = SCOPES[int(reply[1]) - 1]
    kind = reply[2].decode()
    retry_ms, limit = float(reply[3]), int(float(reply[4]))
    retry_s = max(1, math.ceil(retry_ms / 1000))
    if kind == "concurrency":
        message = f"Too many requests in flight at the {scope} scope: the limit is {limit}."
    elif kind == "tokens" and tokens > limit:
        message = (
            f"Request too large for the {scope} scope: it may use {tokens} tokens, more than "
            f"the limit of {limit} tokens per minute. Lower max_tokens or the prompt."
        )
    else:
        message = (
            f"Rate limit reached for {kind} per minute at the {scope} scope: limit {limit}. "
            f"Please try again in {duration(retry_ms)}."
        )
    return RateLimited(
        message,
        kind="tokens" if kind == "tokens" else "requests",
        scope=scope,
        limit_kind=kind,
        code="rate_limit_exceeded",
        headers={"retry-after": str(retry_s)},
    )
