"""Bearer JWTs, verified with pyjwt against an explicit algorithm allow-list.

HMAC algorithms are checked only against the configured HMAC secret and asymmetric ones only
against public keys of their own family, so a token "signed" with a public key as an HMAC
secret (algorithm confusion) can never verify. `alg: none` is refused whatever the
configuration says, and so is any `crit` header (no JWS extension is understood here). Every
token must carry `exp`, `iss` and `aud`, the latter two matching the settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from typing import Any

import aiohttp
import jwt

from gateway.auth.jwks import (
    FETCH_TIMEOUT_S,
    JwksFetchError,
    Key,
    family,
    fetch_jwks,
    fits,
    jwks_keys,
    pem_key,
    tls_context,
)
from gateway.auth.principal import Limits, Principal
from gateway.auth.records import ID_PATTERN
from gateway.errors import Unauthorized
from gateway.jwt_settings import JwtSettings
from gateway.unprintable import has_unprintable

REFRESH_MIN_S = 10.0  # an unknown kid refetches the JWKS at most this often
VERIFIED_MAX = 10_000  # tokens remembered as verified, oldest dropped first
TENANT_ID = re.compile(ID_PATTERN)  # the same ids the admin API accepts
# Every token must carry these; iss and aud are also checked against the settings.
REQUIRED_CLAIMS = ["exp", "iss", "aud"]
UNSUPPORTED_HEADER = "its header has a 'crit' (no extension is supported) or a non-string 'kid'."


def _invalid(message: str, code: str = "invalid_token") -> Unauthorized:
    # Messages never quote the token or its claims: a 401 body echoes nothing the caller sent.
    return Unauthorized(f"Invalid bearer token: {message}", code=code)


class JwtVerifier:
    def __init__(
        self,
        settings: JwtSettings,
        http: aiohttp.ClientSession | None = None,
        *,
        refresh_min_s: float = REFRESH_MIN_S,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.jwks_url: tuple[aiohttp.ClientSession, str] | None = None
        if settings.jwks_url is not None:
            if http is None:
                raise ValueError("auth.jwt.jwks_url needs an HTTP session to fetch the keys")
            self.jwks_url = (http, settings.jwks_url)
        self.tls = tls_context(settings.jwks_ca_file)
        self.refresh_min_s = refresh_min_s
        self.fetch_timeout_s = fetch_timeout_s
        self.algorithms = [a for a in settings.algorithms if a.lower() != "none"]
        self.static_keys: list[Key] = []  # from files, read once here
        if settings.public_key_file is not None:
            self.static_keys.append(pem_key(settings.public_key_file))
        if settings.jwks_file is not None:
            self.static_keys += jwks_keys(json.loads(settings.jwks_file.read_text()))
        self.fetched_keys: list[Key] = []  # from jwks_url
        self.fetched_at = -math.inf
        self.tried_at = -math.inf
        self.fetch_lock = asyncio.Lock()
        # Clients resend the same token until it expires; a signature is checked once.
        self.verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        hit = self.verified.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        principal, exp = await self._verify(token)
        if len(self.verified) >= VERIFIED_MAX:
            del self.verified[next(iter(self.verified))]
        # Bounded by the JWKS cache too, so a key withdrawn by the IdP stops working soon.
        self.verified[token] = (principal, min(exp, time.time() + self.settings.jwks_cache_s))
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise _invalid("it is not a well-formed JWT.") from exc
        except jwt.PyJWTError as exc:  # pyjwt >= 2.12 checks 'crit' and 'kid' here
            raise _invalid(UNSUPPORTED_HEADER) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _invalid(f"its algorithm is not accepted (allowed: {self.algorithms}).")
        kid = header.get("kid")
        if "crit" in header or (kid is not None and not isinstance(kid, str)):
            raise _invalid(UNSUPPORTED_HEADER)  # RFC 7515 4.1.11: no extension is understood
        key = await self._key(alg, kid)
        claims = self._decode(token, key, alg)
        return self._principal(claims), float(claims["exp"])

    async def _key(self, alg: str, kid: str | None) -> Any:
        if alg.startswith("HS"):
            if self.settings.hmac_secret is None:
                raise _invalid(f"{alg} tokens are not accepted here (no HMAC secret).")
            return self.settings.hmac_secret.encode()
        if family(alg) is None:
            raise _invalid(f"{alg} is not supported.")
        if self.jwks_url is not None:
            await self._refresh(kid, *self.jwks_url)
        return self._select(alg, kid).key

    def _keys(self) -> list[Key]:
        return self.static_keys + self.fetched_keys

    def _select(self, alg: str, kid: str | None) -> Key:
        usable = [k for k in self._keys() if fits(k, alg)]
        if kid is not None:
            named = [k for k in usable if k.kid == kid]
            if named:
                return named[0]
            if any(k.kid == kid for k in self._keys()):
                raise _invalid(f"the key its 'kid' names does not verify {alg} tokens.")
            usable = [k for k in usable if k.kid is None]  # a PEM key answers to any kid
            if not usable:
                raise _invalid("unknown 'kid'; no configured key has this id.")
        if not usable:
            raise _invalid(f"no configured key verifies {alg} tokens.")
        if len(usable) > 1:
            raise _invalid(f"the token has no 'kid' and several keys could verify {alg}.")
        return usable[0]

    async def _refresh(self, kid: str | None, http: aiohttp.ClientSession, url: str) -> None:
        """Fetch the JWKS when the cached copy is stale or lacks `kid`; never hammer the IdP."""
        if self._wants_fetch(kid):
            async with self.fetch_lock:  # concurrent misses wait for one fetch, then recheck
                now = time.monotonic()
                if self._wants_fetch(kid) and now - self.tried_at >= self.refresh_min_s:
                    self.tried_at = now
                    await self._fetch(http, url)
        if not self._keys():
            raise _invalid("the signing keys could not be fetched.")

    def _wants_fetch(self, kid: str | None) -> bool:
        unknown = kid is not None and all(k.kid != kid for k in self._keys())
        return unknown or time.monotonic() - self.fetched_at >= self.settings.jwks_cache_s

    async def _fetch(self, http: aiohttp.ClientSession, url: str) -> None:
        log = logging.getLogger("llmaas.auth")
        try:
            keys = await fetch_jwks(http, url, self.tls, timeout_s=self.fetch_timeout_s)
        except (JwksFetchError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s %s", url, type(exc).__name__, exc)
            return  # keep serving with the keys we have
        if not keys:
            log.warning("JWKS at %s has no usable keys", url)
            return
        self.fetched_keys = keys
        self.fetched_at = time.monotonic()

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self.settings
        options: Any = {
            "require": REQUIRED_CLAIMS,
            "verify_aud": True,
            "verify_iss": True,
            "enforce_minimum_key_length": True,  # an error, not a warning per request
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options=options,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _refusal(exc, s, alg) from exc
        for name in _TIMES:  # (pyjwt reads them with int(): "1893456000" and true passed)
            value = claims.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _invalid(f"the '{name}' claim must be a number (NumericDate).")
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self.settings.claims
        tenant = claims.get(names.tenant)
        if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
            raise _invalid(
                f"the '{names.tenant}' claim (the tenant) must be a tenant id: 1-64 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit."
            )
        subject = claims.get(names.subject, f"jwt:{tenant}")
        # (it is the usage records' key_id: an escape reached operators' terminals, a line
        # separator split `llmaas usage --records`, 5,000 characters went into every record)
        if (
            not isinstance(subject, str)
            or not subject
            or len(subject) > MAX_SUBJECT
            or has_unprintable(subject)
        ):
            raise _invalid(
                f"the '{names.subject}' claim must be a non-empty string of at most "
                f"{MAX_SUBJECT} printable characters."
            )
        models = claims.get(names.models)
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):
            raise _invalid(f"the '{names.models}' claim must be a list of model names.")
        return Principal(
            tenant=tenant,
            key_id=subject,
            source="jwt",
            key_models=None if models is None else frozenset(models),
            key_limits=Limits(
                _int_claim(claims, names.rpm),
                _int_claim(claims, names.tpm),
                _int_claim(claims, names.max_concurrency),
            ),
        )


MAX_SUBJECT = 256
_TIMES = ("exp", "nbf", "iat")  # NumericDate claims: JSON numbers (RFC 7519 2)

# pyjwt's refusals said for the caller, filled in with the settings' issuer and audience, the
# claim pyjwt names and the algorithm; a message never quotes the token or its claims.
_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ImmatureSignatureError, "it is not valid yet ('nbf' or 'iat' in the future)."),
    (jwt.InvalidAudienceError, "wrong audience; 'aud' must name {aud!r}."),
    (jwt.InvalidIssuerError, "wrong issuer; 'iss' must be {iss!r}."),
    (jwt.MissingRequiredClaimError, "the '{claim}' claim is required."),
    (jwt.InvalidSignatureError, "its signature does not verify."),
    (jwt.exceptions.InvalidSubjectError, "the 'sub' claim must be a string."),
    (jwt.exceptions.InvalidJTIError, "the 'jti' claim must be a string."),
    (jwt.InvalidIssuedAtError, "the 'iat' claim must be a number (NumericDate)."),
    (jwt.InvalidKeyError, "the configured key cannot verify {alg} tokens."),
)


def _refusal(exc: Exception, s: JwtSettings, alg: str) -> Unauthorized:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _invalid("it has expired ('exp').", code="token_expired")
    for kind, message in _REFUSALS:
        if isinstance(exc, kind):
            claim = getattr(exc, "claim", "")
            return _invalid(message.format(aud=s.audience, iss=s.issuer, claim=claim, alg=alg))
    said = str(exc)  # pyjwt's "Expiration Time claim (exp) must be an integer." names a claim
    if isinstance(exc, jwt.DecodeError) and "claim (" in said:
        claim = said.split("claim (", 1)[1].split(")", 1)[0]
        return _invalid(f"the '{claim}' claim must be a number (NumericDate).")
    if isinstance(exc, jwt.DecodeError):
        return _invalid("it is not a well-formed JWT.")
    return _invalid(f"pyjwt refused it ({type(exc).__name__}).")


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"the '{name}' claim must be a positive integer.")
    return value
