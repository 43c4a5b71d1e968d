"""Bearer JWTs, verified with pyjwt against an explicit algorithm allow-list.

HMAC algorithms are checked only against the configured HMAC secret and asymmetric ones only
against public keys of their own family, so a token "signed" with a public key as an HMAC
secret (algorithm confusion) can never verify. `alg: none` is refused whatever the
configuration says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.auth.principal import Limits, Principal
from gateway.errors import Unauthorized
from gateway.settings import JwtSettings

REFRESH_MIN_S = 10.0  # an unknown kid refetches the JWKS at most this often
VERIFIED_MAX = 10_000  # tokens remembered as verified, oldest dropped first
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
# The JWK key type ("kty") each asymmetric algorithm family verifies with.
FAMILIES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _invalid(message: str, code: str = "invalid_token") -> Unauthorized:
    return Unauthorized(f"Invalid bearer token: {message}", code=code)


def _family(alg: str) -> str | None:
    return FAMILIES.get(alg[:2])


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    family: str  # a JWK "kty": RSA, EC or OKP
    alg: str | None  # a JWK's declared "alg": then it verifies only that algorithm
    key: Any  # a loaded cryptography public key, parsed once


class JwtVerifier:
    def __init__(
        self,
        settings: JwtSettings,
        http: aiohttp.ClientSession | None = None,
        *,
        refresh_min_s: float = REFRESH_MIN_S,
    ) -> None:
        self.settings = settings
        self.jwks_url: tuple[aiohttp.ClientSession, str] | None = None
        if settings.jwks_url is not None:
            if http is None:
                raise ValueError("auth.jwt.jwks_url needs an HTTP session to fetch the keys")
            self.jwks_url = (http, settings.jwks_url)
        self.refresh_min_s = refresh_min_s
        self.algorithms = [a for a in settings.algorithms if a.lower() != "none"]
        self.static_keys: list[_Key] = []  # from files, read once here
        if settings.public_key_file is not None:
            self.static_keys.append(_pem_key(settings.public_key_file))
        if settings.jwks_file is not None:
            self.static_keys += _jwks_keys(json.loads(settings.jwks_file.read_text()))
        self.fetched_keys: list[_Key] = []  # from jwks_url
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
        except jwt.PyJWTError as exc:
            raise _invalid("it is not a well-formed JWT.") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _invalid(f"algorithm {alg!r} is not accepted (allowed: {self.algorithms}).")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("the 'kid' header must be a string.")
        key = await self._key(alg, kid)
        claims = self._decode(token, key, alg)
        return self._principal(claims), float(claims["exp"])

    async def _key(self, alg: str, kid: str | None) -> Any:
        if alg.startswith("HS"):
            if self.settings.hmac_secret is None:
                raise _invalid(f"{alg} tokens are not accepted here (no HMAC secret).")
            return self.settings.hmac_secret.encode()
        if _family(alg) is None:
            raise _invalid(f"algorithm {alg!r} is not supported.")
        if self.jwks_url is not None:
            await self._refresh(kid, *self.jwks_url)
        return self._select(alg, kid).key

    def _keys(self) -> list[_Key]:
        return self.static_keys + self.fetched_keys

    def _select(self, alg: str, kid: str | None) -> _Key:
        usable = [k for k in self._keys() if k.family == _family(alg) and k.alg in (None, alg)]
        if kid is not None:
            named = [k for k in usable if k.kid == kid]
            if named:
                return named[0]
            if any(k.kid == kid for k in self._keys()):
                raise _invalid(f"the key with kid {kid!r} does not verify {alg} tokens.")
            usable = [k for k in usable if k.kid is None]  # a PEM key answers to any kid
            if not usable:
                raise _invalid(f"unknown kid {kid!r}; no configured key has this id.")
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
        try:
            async with http.get(url, timeout=FETCH_TIMEOUT) as resp:
                resp.raise_for_status()
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logging.getLogger("llmaas.auth").warning("JWKS fetch from %s failed: %s", url, exc)
            return  # keep serving with the keys we have
        keys = _jwks_keys(document)
        if not keys:
            logging.getLogger("llmaas.auth").warning("JWKS at %s has no usable keys", url)
            return
        self.fetched_keys = keys
        self.fetched_at = time.monotonic()

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self.settings
        options: Any = {
            "require": ["exp"],
            "verify_aud": s.audience is not None,
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
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("it has expired ('exp').", code="token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _invalid("it is not valid yet ('nbf' or 'iat' in the future).") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid(f"wrong audience; 'aud' must name {s.audience!r}.") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid(f"wrong issuer; 'iss' must be {s.issuer!r}.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the '{exc.claim}' claim is required.") from exc
        except jwt.InvalidSignatureError as exc:
            raise _invalid("its signature does not verify.") from exc
        except jwt.DecodeError as exc:
            raise _invalid("it is not a well-formed JWT.") from exc
        except jwt.InvalidKeyError as exc:
            raise _invalid(f"the configured key cannot verify {alg} tokens.") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid(f"{exc}.") from exc
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = self.settings.claims
        tenant = claims.get(names.tenant)
        if not isinstance(tenant, str) or not tenant:
            raise _invalid(f"the '{names.tenant}' claim (the tenant) is missing or empty.")
        subject = claims.get(names.subject, f"jwt:{tenant}")
        if not isinstance(subject, str) or not subject:
            raise _invalid(f"the '{names.subject}' claim must be a non-empty string.")
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


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"the '{name}' claim must be a positive integer.")
    return value


def _pem_key(path: Path) -> _Key:
    key = load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        return _Key(None, "RSA", None, key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _Key(None, "EC", None, key)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return _Key(None, "OKP", None, key)
    raise ValueError(f"{path}: not an RSA, EC or EdDSA public key")


def _jwks_keys(document: Any) -> list[_Key]:
    entries = document.get("keys") if isinstance(document, dict) else None
    keys: list[_Key] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in FAMILIES.values():
            continue  # symmetric ("oct") or unknown keys never verify anything here
        try:
            parsed = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key this build cannot use; the others may still serve
        alg = entry.get("alg")
        keys.append(
            _Key(parsed.key_id, entry["kty"], alg if isinstance(alg, str) else None, parsed.key)
        )
    return keys
