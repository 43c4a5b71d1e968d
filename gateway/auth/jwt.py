"""Bearer JWTs, verified with pyjwt against an explicit algorithm allow-list.

HMAC algorithms are checked only against the configured HMAC secret and asymmetric ones only
against public keys, so a token "signed" with a public key as an HMAC secret (algorithm
confusion) can never verify. `alg: none` is refused whatever the configuration says.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK

from gateway.auth.principal import Limits, Principal
from gateway.errors import Unauthorized
from gateway.settings import JwtSettings

REFRESH_MIN_S = 10.0  # an unknown kid refetches the JWKS at most this often
VERIFIED_MAX = 10_000  # tokens remembered as verified (until their exp), oldest dropped first


def _invalid(message: str, code: str = "invalid_token") -> Unauthorized:
    return Unauthorized(f"Invalid bearer token: {message}", code=code)


class JwtVerifier:
    def __init__(self, settings: JwtSettings, http: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.http = http
        self.algorithms = [a for a in settings.algorithms if a.lower() != "none"]
        self.pem_key: Any = None
        if settings.public_key_file is not None:
            self.pem_key = load_pem_public_key(settings.public_key_file.read_bytes())
        self.jwks: dict[str, PyJWK] = {}
        self.jwks_loaded_at = 0.0
        self.jwks_tried_at = 0.0
        if settings.jwks_file is not None:
            self.jwks = _parse_jwks(json.loads(settings.jwks_file.read_text()))
        # Clients resend the same token until it expires; a signature is checked once.
        self.verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        hit = self.verified.get(token)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        principal, exp = await self._verify(token)
        if len(self.verified) >= VERIFIED_MAX:
            del self.verified[next(iter(self.verified))]
        self.verified[token] = (principal, exp)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid("it is not a well-formed JWT.") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _invalid(f"algorithm {alg!r} is not accepted (allowed: {self.algorithms}).")
        key = await self._key(alg, header.get("kid"))
        claims = self._decode(token, key, alg)
        return self._principal(claims), float(claims["exp"])

    async def _key(self, alg: str, kid: Any) -> Any:
        if alg.startswith("HS"):
            if self.settings.hmac_secret is None:
                raise _invalid(f"{alg} tokens are not accepted here.")
            return self.settings.hmac_secret.encode()
        if kid is None:
            return self._only_key()
        if not isinstance(kid, str):
            raise _invalid("the 'kid' header must be a string.")
        if kid not in self.jwks or self._jwks_stale():
            await self._refresh_jwks(force=kid not in self.jwks)
        if kid not in self.jwks:
            raise _invalid(f"unknown kid {kid!r}.", code="unknown_kid")
        return self.jwks[kid].key

    def _only_key(self) -> Any:
        keys = ([self.pem_key] if self.pem_key is not None else []) + [
            k.key for k in self.jwks.values()
        ]
        if len(keys) != 1:
            raise _invalid("the token has no 'kid' and more than one key could verify it.")
        return keys[0]

    def _jwks_stale(self) -> bool:
        url_configured = self.settings.jwks_url is not None
        return (
            url_configured and time.monotonic() - self.jwks_loaded_at > self.settings.jwks_cache_s
        )

    async def _refresh_jwks(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.settings.jwks_url is None or self.http is None:
            return
        if force and now - self.jwks_tried_at < REFRESH_MIN_S and self.jwks_loaded_at:
            return
        self.jwks_tried_at = now
        try:
            async with self.http.get(
                self.settings.jwks_url, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                resp.raise_for_status()
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if not self.jwks:
                raise _invalid(
                    "the signing keys could not be fetched.", code="jwks_unavailable"
                ) from exc
            return  # keep serving with the keys we have
        self.jwks = _parse_jwks(document)
        self.jwks_loaded_at = now

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self.settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp"], "verify_aud": s.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("it has expired.", code="token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _invalid("it is not valid yet (nbf/iat in the future).") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid(f"wrong audience; expected 'aud' {s.audience!r}.") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid(f"wrong issuer; expected 'iss' {s.issuer!r}.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the '{exc.claim}' claim is required.") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid("its signature does not verify.") from exc
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self.settings.claims
        tenant = claims.get(names.tenant)
        if not isinstance(tenant, str) or not tenant:
            raise _invalid(f"the '{names.tenant}' claim (the tenant) is missing.")
        subject = claims.get(names.subject)
        models = claims.get(names.models)
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):
            raise _invalid(f"the '{names.models}' claim must be a list of model names.")
        return Principal(
            tenant=tenant,
            key_id=str(subject) if subject is not None else f"jwt:{tenant}",
            source="jwt",
            key_models=None if models is None else frozenset(models),
            key_limits=Limits(
                _int_claim(claims, names.rpm),
                _int_claim(claims, names.tpm),
                _int_claim(claims, names.max_concurrency),
            ),
        )


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"the '{name}' claim must be a positive integer.")
    return value


def _parse_jwks(document: Any) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for entry in document.get("keys", []) if isinstance(document, dict) else []:
        try:
            jwk = PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type this build cannot use; others may still serve
        if jwk.key_id:
            keys[jwk.key_id] = jwk
    return keys
