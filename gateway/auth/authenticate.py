"""Turn a request's credentials into a Principal, or refuse with 401 in OpenAI's shape.

`Authorization: Bearer <key or JWT>`, or `api-key: <key>` for Azure-style clients. A rejected
key never tells whether its id exists: unknown ids and wrong secrets get the same answer; only
the holder of the real secret learns that the key was revoked or has expired.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, TypeVar, cast

from redis.exceptions import RedisError
from starlette.datastructures import Headers

from gateway.auth.api_keys import PREFIX, parse_key, secret_matches
from gateway.auth.cache import AuthCache, Timed
from gateway.auth.jwt import JwtVerifier
from gateway.auth.mismatches import SecretMismatches
from gateway.auth.principal import ANONYMOUS, Limits, Principal
from gateway.auth.records import KeyRecord, TenantRecord
from gateway.auth.store import AuthStore
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized, no_redis

# Used only in dev mode when no pepper is configured (the settings refuse that elsewhere).
DEV_PEPPER = "llmaas-development-only-pepper"
T = TypeVar("T")
# For this long after a Redis read failed, a record past its ttl (within auth.stale_max_s)
# answers without waiting on Redis; each further failed read starts it again.
UNAVAILABLE_BACKOFF_S = 5.0


def _invalid() -> Unauthorized:
    # Never any part of the token: a 401 body or log line must not help reassemble a secret.
    return Unauthorized(
        "Incorrect API key provided. Check the key you are using.", code="invalid_api_key"
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    record: KeyRecord  # the cached record the secret was checked against
    tenant: TenantRecord | None  # the cached tenant record the principal was built from
    tag: bytes  # keyed BLAKE2b of that secret
    principal: Principal


@dataclass(frozen=True, slots=True)
class _Read:
    generation: int  # the cache's when the read began
    task: asyncio.Future[Any]  # the record (a KeyRecord or a TenantRecord) or None


def bearer(headers: Headers) -> str | None:
    """The token of the request's one `Authorization: Bearer` header (any whitespace after
    the scheme, a tab too); None without one. Two Authorization headers are a 401: which one
    counts would be this gateway's pick, and a proxy in front may act on the other."""
    found = headers.getlist("authorization")
    if len(found) > 1:
        raise Unauthorized(
            "The request carries more than one Authorization header; send one.",
            code="invalid_authorization_header",
        )
    parts = found[0].split(None, 1) if found else ()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip() or None
    return None


def credentials(headers: Headers) -> str:
    """The request's one credential: its Bearer token or its `api-key` (as Azure-style
    clients send it). Two of them that differ are a 401, as two Authorization headers are (a
    Bearer token and a different `api-key` were served as the token, the other ignored)."""
    token = bearer(headers)
    keys = headers.getlist("api-key")
    if len(keys) > 1:  # (as two Authorization headers)
        raise Unauthorized(
            "The request carries more than one api-key header; send one.",
            code="invalid_authorization_header",
        )
    key = keys[0].strip() if keys else ""
    if token is not None:
        if key and key != token:
            raise Unauthorized(
                "The request carries a Bearer token and a different api-key header; send one.",
                code="invalid_authorization_header",
            )
        return token
    if key:
        return key
    raise Unauthorized(
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        code="missing_api_key",
    )


class Authenticator:
    def __init__(
        self,
        *,
        required: bool,
        pepper: str | None,
        store: AuthStore | None,
        cache: AuthCache,
        jwt: JwtVerifier | None,
        on_unavailable: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_unavailable`: called for each request refused because Redis cannot be read."""
        self.required = required
        self.pepper = (pepper or DEV_PEPPER).encode()
        self.store = store
        self.cache = cache
        self.jwt = jwt
        self.on_unavailable = on_unavailable
        # Per key id, the last secret that passed the HMAC check and the principal built for it:
        # while the cache hands out the same records (an invalidation or expiry replaces them),
        # the same secret is recognised by a keyed BLAKE2b tag (this process's random key; no
        # secret is kept) instead of the HMAC, and the principal is not built again.
        self.verified: dict[str, _Verified] = {}
        self.tag_key = os.urandom(32)
        # Redis reads in flight, by (kind, name): concurrent misses of one record share one read
        # (a cold burst of one key made each request read it, emptied the Redis pool and
        # answered 503 auth_store_unavailable with Redis well).
        self.reading: dict[tuple[str, str], _Read] = {}
        # When a Redis read last failed (monotonic), unless one succeeded since: see _cached.
        self.failed_at = -math.inf
        self.mismatches = SecretMismatches()  # (a replica with another key_pepper: logged)

    async def principal(self, headers: Headers) -> Principal:
        if not self.required:
            return ANONYMOUS
        token = credentials(headers)
        if token.startswith(PREFIX):
            return await self._api_key(token)
        if self.jwt is not None and token.count(".") == 2:
            principal = await self.jwt.verify(token)
            tenant = await self._tenant(principal.tenant)
            _refuse_if_disabled(tenant)
            return dataclasses.replace(
                principal,
                tenant_models=None if tenant is None else tenant.model_set(),
                tenant_limits=Limits() if tenant is None else tenant.limits(),
                priority=None if tenant is None else tenant.priority,
                media_hosts=None if tenant is None else tenant.media_host_set(),
            )
        raise _invalid()

    def recognises(self, headers: Headers) -> bool:
        """Whether the request carries an API key that this process has verified, answered
        from memory alone (no Redis, no HMAC): what lets a known key through while its client
        address is turned away for others' failed attempts. While its record is cached, only
        if that record is still valid; once the record has aged out of the cache (or an admin
        write dropped it), the key goes on to be read again, once: a key in use was locked out
        `cache_ttl_s` after its last read, for as long as its address stayed turned away, and
        a key found revoked then is cached as such and turned away with the others."""
        try:
            token = credentials(headers)
        except Unauthorized:
            return False
        parsed = parse_key(token) if token.startswith(PREFIX) else None
        if parsed is None:
            return False
        key_id, secret = parsed
        found, record = self.cache.keys.get(key_id)
        if not found:
            known = self.verified.get(key_id)
            return known is not None and hmac.compare_digest(known.tag, self._tag(secret))
        return (
            record is not None
            and self._known(key_id, secret, record) is not None
            and record.usable(time.time())
        )

    async def _api_key(self, token: str) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            raise _invalid()
        key_id, secret = parsed
        record = await self._key(key_id)
        if record is None:
            raise _invalid()
        known = self._known(key_id, secret, record)
        if known is None and not secret_matches(self.pepper, secret, record.secret_hash):
            self.mismatches.seen(key_id)
            raise _invalid()
        if record.revoked:
            raise Unauthorized("This API key has been revoked.", code="invalid_api_key")
        if record.expired(time.time()):
            raise Unauthorized("This API key has expired.", code="invalid_api_key")
        tenant = await self._tenant(record.tenant)
        _refuse_if_disabled(tenant)
        if known is not None and known.tenant is tenant:
            return known.principal
        principal = Principal(
            tenant=record.tenant,
            key_id=record.id,
            source="api_key",
            key_models=record.model_set(),
            tenant_models=None if tenant is None else tenant.model_set(),
            key_limits=record.limits(),
            tenant_limits=Limits() if tenant is None else tenant.limits(),
            priority=None if tenant is None else tenant.priority,
            media_hosts=None if tenant is None else tenant.media_host_set(),
        )
        if len(self.verified) >= self.cache.keys.max_entries:
            self.verified.clear()
        self.verified[key_id] = _Verified(record, tenant, self._tag(secret), principal)
        return principal

    def _known(self, key_id: str, secret: str, record: KeyRecord) -> _Verified | None:
        """What this process verified for the key, if `secret` is the one that passed and
        `record` is still the one it was checked against (else the HMAC decides)."""
        known = self.verified.get(key_id)
        if known is None or known.record is not record:
            return None
        return known if hmac.compare_digest(known.tag, self._tag(secret)) else None

    def _tag(self, secret: str) -> bytes:
        return blake2b(secret.encode(), key=self.tag_key, digest_size=16).digest()

    async def _key(self, key_id: str) -> KeyRecord | None:
        return await self._cached("key", self.cache.keys, key_id, self._store().get_key)

    async def _tenant(self, tenant: str) -> TenantRecord | None:
        return await self._cached("tenant", self.cache.tenants, tenant, self._store().get_tenant)

    async def _cached(
        self, kind: str, entries: Timed[T], name: str, load: Callable[[str], Awaitable[T | None]]
    ) -> T | None:
        """The cached record, else Redis's, cached unless an invalidation overtook the read.
        A read begun before the last invalidation is never joined: its answer may be stale.
        Within UNAVAILABLE_BACKOFF_S of a failed read, a record past its ttl answers at once
        while the read goes on in the background: a hung Redis made every request wait out
        its key's read and its tenant's, for each, before that record answered."""
        found, record = entries.get(name)
        if found:
            return record
        pending = self._reading(kind, entries, name, load)
        if time.monotonic() < self.failed_at + UNAVAILABLE_BACKOFF_S:
            stale = entries.stale(name, self.cache.stale_s)
            if stale is not None:
                return stale
        try:  # shielded: a client that leaves does not cancel the read the others wait for
            return cast("T | None", await asyncio.shield(pending.task))
        except ServiceUnavailable:  # the store cannot be read: its last answer, if recent
            stale = entries.stale(name, self.cache.stale_s)  # (0: none, as it has expired)
            if stale is None:
                self.on_unavailable()
                raise
            return stale

    def _reading(
        self, kind: str, entries: Timed[T], name: str, load: Callable[[str], Awaitable[T | None]]
    ) -> _Read:
        """The read of the record in flight, joined, or a new one."""
        generation = self.cache.generation
        pending = self.reading.get((kind, name))
        if pending is not None and pending.generation == generation:
            return pending

        async def read() -> T | None:
            record = await self._read(load(name))
            if self.cache.generation == generation:
                entries.put(name, record)
            return record

        started = _Read(generation, asyncio.ensure_future(read()))
        self.reading[(kind, name)] = started
        started.task.add_done_callback(lambda _: self._read_done(kind, name, started))
        return started

    def _read_done(self, kind: str, name: str, read: _Read) -> None:
        if self.reading.get((kind, name)) is read:
            del self.reading[(kind, name)]
        if not read.task.cancelled():
            read.task.exception()  # retrieved here too: every waiter may have left

    def _store(self) -> AuthStore:
        if self.store is None:
            raise no_redis("Authentication")
        return self.store

    async def _read(self, pending: Awaitable[T]) -> T:
        try:
            found = await pending
        except (RedisError, OSError) as exc:
            self.failed_at = time.monotonic()
            raise ServiceUnavailable(
                "The key store is unreachable right now; try again shortly.",
                code="auth_store_unavailable",
                headers={"retry-after": "1"},
            ) from exc
        self.failed_at = -math.inf  # Redis answers: records are read before they answer again
        return found


def _refuse_if_disabled(tenant: TenantRecord | None) -> None:
    if tenant is not None and tenant.disabled:
        raise Forbidden(
            f"The tenant '{tenant.id}' is disabled: its requests are refused until an "
            "administrator enables it again.",
            code="tenant_disabled",
        )
