"""The typed wrapper around admission.lua, release.lua and renew.lua.

One EVALSHA admits a request against every limit of the key and its tenant; settling it (token
refund or charge, lease release) is part of writing its usage (gateway/metering/settle.lua).
Results render OpenAI's x-ratelimit-* headers, and a refusal is OpenAI's 429 with Retry-After.
An admission is named by its lease id: sent twice it charges once, and one the gateway gave up
on is released by that id (release.lua), which also cancels it if it has not run yet.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited
from gateway.limits.lua import with_bucket
from gateway.redis_pipe import PipeScript, RedisPipe
from gateway.redis_wire import Command

_SCRIPTS = Path(__file__).parent
SCOPES = ("key", "tenant")
# Retry-After of a concurrency refusal: a slot frees when one of the requests in flight ends,
# which nobody knows in advance; the lease's expiry (what Redis reports) is minutes away.
CONCURRENCY_RETRY_S = 1
ReleaseOutcome = Literal["refunded", "cancelled", "released"]


class AdmissionCancelled(Exception):
    """The admission's lease was released before it reached Redis: it charged nothing."""


def new_lease() -> str:
    return secrets.token_hex(8)


def scope_keys(tenant: str, scope_id: str) -> tuple[list[str], list[str]]:
    """Redis keys (rpm, tpm, leases) of the key scope (`Principal.scope_id`) and of the tenant
    scope."""
    tag = f"llmaas:{{t:{tenant}}}"
    key_scope = f"{tag}:k:{scope_id}"
    return (
        [f"{key_scope}:rpm", f"{key_scope}:tpm", f"{key_scope}:leases"],
        [f"{tag}:rpm", f"{tag}:tpm", f"{tag}:leases"],
    )


def marker_key(tenant: str, lease: str) -> str:
    """Where admission.lua notes an admission (its tokens) and release.lua its release ("x")."""
    return f"llmaas:{{t:{tenant}}}:adm:{lease}"


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
    slots_free: int | None = None  # concurrency slots left at the tightest scope (None: no limit)
    # The key's and the tenant's token bucket right after this was charged (Redis ms; 0: no
    # tpm there, or not known): what of its reservation a settlement may give back.
    charged_until: tuple[int, int] = (0, 0)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.requests is not None:
            _figures(out, _REQUESTS_HEADERS, self.requests)
        if self.tokens is not None:
            _figures(out, _TOKENS_HEADERS, self.tokens)
        return out


_REQUESTS_HEADERS = tuple(f"x-ratelimit-{f}-requests" for f in ("limit", "remaining", "reset"))
_TOKENS_HEADERS = tuple(f"x-ratelimit-{f}-tokens" for f in ("limit", "remaining", "reset"))


def _figures(out: dict[str, str], names: tuple[str, ...], values: tuple[int, int, float]) -> None:
    """One kind's x-ratelimit-limit-, -remaining- and -reset- headers (names in that order)."""
    limit, remaining, reset = values
    out[names[0]] = str(limit)
    out[names[1]] = str(remaining) if remaining > 0 else "0"
    out[names[2]] = duration(reset)


def _triple(limit: int | bytes, remaining: int, reset: int) -> tuple[int, int, float] | None:
    """admission.lua's integers for one kind; b"" where no scope limits that kind."""
    if limit == b"":
        return None
    return int(limit), remaining, float(reset)


class Limiter:
    def __init__(
        self,
        redis: Redis,
        lease_ttl_s: float = 120.0,
        window_s: float = 60.0,
        pipe: RedisPipe | None = None,
    ) -> None:
        """`window_s` is the "minute" of rpm and tpm; tests shorten it, production keeps 60.
        `pipe`: the connection admissions go out on (gateway/redis_pipe.py: concurrent ones
        share round trips), shared with the ledger's settlements; default: one of its own."""
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.window_ms = int(window_s * 1000)
        self.pipe = pipe or RedisPipe(redis)
        self._admit = PipeScript(self.pipe, with_bucket(_SCRIPTS / "admission.lua"))
        self._release = redis.register_script(with_bucket(_SCRIPTS / "release.lua"))
        self._renew = redis.register_script((_SCRIPTS / "renew.lua").read_text())
        self.redis = redis

    async def admit(self, principal: Principal, tokens: int, lease: str | None = None) -> Admission:
        """Charge every limit of both scopes, or none; RateLimited names the one that refused.

        Admitting a lease again charges nothing: it answers admitted (without header figures)
        if the first call admitted it, and raises AdmissionCancelled once it was released.
        Concurrent admissions of one key and limits go to Redis as one call (redis_wire.py).
        """
        (answer,) = await self.admit_all(principal, [(tokens, lease or new_lease())])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def admit_all(
        self, principal: Principal, requests: list[tuple[int, str]]
    ) -> list[Admission | RateLimited | AdmissionCancelled]:
        """`admit` for several (tokens, lease) of one principal at once, decided in order in
        one call: each one's admission, or the refusal or cancellation `admit` would raise."""
        key_keys, tenant_keys = scope_keys(principal.tenant, principal.scope_id)
        limits = _limit_args(principal.key_limits) + _limit_args(principal.tenant_limits)
        name = ((*key_keys, *tenant_keys), (self.lease_ttl_ms, self.window_ms, *limits))
        items = [(marker_key(principal.tenant, lease), tokens, lease) for tokens, lease in requests]
        replies = await self._admit.merged_all(name, items, self._admit_command)
        pairs = zip(replies, requests, strict=True)
        return [_answer(reply, tokens, lease) for reply, (tokens, lease) in pairs]

    def _admit_command(self, name: Hashable, items: list[Any]) -> Command:
        """admission.lua for the admissions gathered under one key and its limits, in order."""
        keys, args = cast("tuple[tuple[str, ...], tuple[int, ...]]", name)
        requests: list[Any] = []
        for _, tokens, lease in items:
            requests += (tokens, lease)
        return self._admit.command([*keys, *[marker for marker, _, _ in items]], [*args, *requests])

    async def release(self, principal: Principal, lease: str) -> ReleaseOutcome:
        """Give back what admitting `lease` charged, once, and cancel it if it has not run."""
        keys, args = self._release_call(principal, lease)
        return _OUTCOMES[await self._release(keys=keys, args=args)]

    async def release_many(self, leases: list[tuple[Principal, str]]) -> list[ReleaseOutcome]:
        """`release` for each lease, in one round trip on one connection (a pipeline)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for principal, lease in leases:
                keys, args = self._release_call(principal, lease)
                await self._release(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [_OUTCOMES[reply] for reply in replies]

    def _release_call(self, principal: Principal, lease: str) -> tuple[list[str], list[Any]]:
        """release.lua's keys and arguments for `lease`."""
        key_keys, tenant_keys = scope_keys(principal.tenant, principal.scope_id)
        keys = [marker_key(principal.tenant, lease), *key_keys, *tenant_keys]
        tpm = [principal.key_limits.tpm or 0, principal.tenant_limits.tpm or 0]
        return keys, [lease, self.window_ms, *tpm]

    async def renew(self, leases: list[tuple[Principal, str]]) -> int:
        """Move the expiry of these leases to a ttl from now (renew.lua), in one round trip;
        the number of lease-set entries still held (a settled lease is not added back)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for caller, lease in leases:
                key_keys, tenant_keys = scope_keys(caller.tenant, caller.scope_id)
                keys = [key_keys[2], tenant_keys[2]]
                await self._renew(keys=keys, args=[lease, self.lease_ttl_ms], client=pipe)
            replies = await pipe.execute()
        return sum(int(reply) for reply in replies)


def _answer(
    reply: list[Any], tokens: int, lease: str
) -> Admission | RateLimited | AdmissionCancelled:
    status = int(reply[0])
    if status == 1:
        free = reply[7]
        slots = None if free == b"" else int(free)
        until = (int(reply[8]), int(reply[9]))
        return Admission(lease, tokens, _triple(*reply[1:4]), _triple(*reply[4:7]), slots, until)
    if status == 2:
        if reply[1] == b"x":
            return AdmissionCancelled(lease)
        return Admission(lease, int(reply[1]), None, None)
    return _refusal(reply, tokens)


_OUTCOMES: dict[bytes, ReleaseOutcome] = {
    b"refunded": "refunded",
    b"cancelled": "cancelled",
    b"released": "released",
}


def concurrency_refused(scope: str, limit: int) -> RateLimited:
    """The 429 of a concurrency limit reached: a slot frees when a request in flight ends,
    soon but at no known time."""
    return RateLimited(
        f"Too many requests in flight at the {scope} scope: the limit is {limit}. "
        "Try again when one of them has finished.",
        kind="requests",
        scope=scope,
        limit_kind="concurrency",
        code="rate_limit_exceeded",
        headers={"retry-after": str(CONCURRENCY_RETRY_S)},
    )


class TooLarge(RateLimited):
    """A request that may use more tokens than a tokens-per-minute limit: no wait makes room.
    The limiter does not know the route; `naming` tells the client the field to lower (None:
    a route that generates nothing, whose input alone is too large)."""

    def __init__(self, scope: str, tokens: int, limit: int, output_field: str | None = None):
        advice = (
            "Send fewer or shorter inputs."
            if output_field is None
            else f"Lower {output_field} or the prompt."
        )
        super().__init__(
            f"Request too large for the {scope} scope: it may use {tokens} tokens, more than "
            f"the limit of {limit} tokens per minute. {advice}",
            kind="tokens",
            scope=scope,
            limit_kind="tokens",
            code="rate_limit_exceeded",
            # OpenAI's SDKs retry a 429 unless told not to, after Retry-After if there is one
            headers={"x-should-retry": "false", _TOKENS_HEADERS[0]: str(limit)},
        )
        self.tokens = tokens
        self.limit = limit

    def naming(self, output_field: str | None) -> TooLarge:
        """The same refusal, telling the client to lower `output_field` (the one it sent)."""
        return TooLarge(self.scope, self.tokens, self.limit, output_field)


def _refusal(reply: list[bytes], tokens: int) -> RateLimited:
    scope = SCOPES[int(reply[1]) - 1]
    kind = reply[2].decode()
    retry_ms, limit = float(reply[3]), int(float(reply[4]))
    if kind == "concurrency":  # (Redis's retry is when the oldest lease would expire)
        return concurrency_refused(scope, limit)
    if kind == "tokens" and tokens > limit:  # no wait makes room: not worth a retry
        return TooLarge(scope, tokens, limit)
    message = (
        f"Rate limit reached for {kind} per minute at the {scope} scope: limit {limit}. "
        f"Please try again in {duration(retry_ms)}."
    )
    # Retry-After in whole seconds; retry-after-ms exact, which OpenAI's SDKs read first (a
    # tpm bucket short of a few tokens has room again in ms, not the 1 s they waited)
    wait_ms = max(1, math.ceil(retry_ms))
    headers = {"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)}
    # as OpenAI's 429s: the refusing limit's figures, none left
    _figures(
        headers,
        _TOKENS_HEADERS if kind == "tokens" else _REQUESTS_HEADERS,
        (limit, 0, retry_ms),
    )
    return RateLimited(
        message,
        kind="tokens" if kind == "tokens" else "requests",
        scope=scope,
        limit_kind=kind,
        code="rate_limit_exceeded",
        headers=headers,
    )
