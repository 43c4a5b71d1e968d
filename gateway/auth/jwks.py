"""Public keys that verify JWTs: a PEM file, a JWKS document, or a JWKS fetched over HTTPS.

A fetch is bounded on every side an IdP (or whoever answers in its place) could abuse: https
only, no redirects, no compression, at most `JWKS_MAX_BYTES` read, `FETCH_TIMEOUT_S` in all.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

JWKS_MAX_BYTES = 1 << 20  # real JWKS documents are a few KiB
FETCH_TIMEOUT_S = 5.0
# The JWK key type ("kty") each asymmetric algorithm family verifies with.
FAMILIES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class JwksFetchError(Exception):
    """The JWKS URL answered with something other than a bounded 200 over https."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    family: str  # a JWK "kty": RSA, EC or OKP
    alg: str | None  # a JWK's declared "alg": then it verifies only that algorithm
    key: Any  # a loaded cryptography public key, parsed once


def family(alg: str) -> str | None:
    return FAMILIES.get(alg[:2])


def fits(key: Key, alg: str) -> bool:
    """Whether `key` verifies tokens signed with `alg` (its family's, and its declared one)."""
    return key.family == family(alg) and (key.alg is None or key.alg == alg)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the JWKS server against `ca_file` if given, else the system's trust store."""
    return ssl.create_default_context(cafile=ca_file)


async def fetch_jwks(
    http: aiohttp.ClientSession,
    url: str,
    tls: ssl.SSLContext,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    max_bytes: int = JWKS_MAX_BYTES,
) -> list[Key]:
    if not url.startswith("https://"):
        raise JwksFetchError("only https:// JWKS URLs are fetched")
    async with http.get(
        url,
        ssl=tls,
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Accept": "application/json", "Accept-Encoding": "identity"},
    ) as resp:
        if resp.status != 200:
            raise JwksFetchError(f"HTTP {resp.status} (redirects are not followed)")
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise JwksFetchError(f"the document is over {max_bytes} bytes")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise JwksFetchError(f"the document is over {max_bytes} bytes")
    return jwks_keys(json.loads(body))


def key_file_errors(
    public_key_file: Path | None,
    jwks_file: Path | None,
    ca_file: Path | None,
    *,
    algorithms: list[str] | None = None,
    other_keys: bool = False,
) -> list[str]:
    """What is wrong with the JWT key files a config names, each as `field (path): reason`:
    checked before the gateway starts, which would otherwise fail in its startup with a
    traceback that names no setting. `algorithms`: the listed ones, which some key must
    verify unless `other_keys` (an HMAC secret for a listed HS*, or a JWKS URL: keys not known
    before the gateway starts) may."""
    errors: list[str] = []
    keys: list[Key] = []
    if public_key_file is not None:
        try:
            keys.append(pem_key(public_key_file))
        except (OSError, ValueError, TypeError) as exc:
            errors.append(f"auth.jwt.public_key_file ({public_key_file}): {_reason(exc)}")
    if jwks_file is not None:
        try:
            found = jwks_keys(json.loads(jwks_file.read_bytes()))
            if not found:
                errors.append(
                    f"auth.jwt.jwks_file ({jwks_file}): no signing key this gateway can use"
                )
            keys += found
        except (OSError, ValueError) as exc:
            errors.append(f"auth.jwt.jwks_file ({jwks_file}): {_reason(exc)}")
    if keys and algorithms and not errors and not other_keys:
        errors += _unverifiable(keys, algorithms)
    if ca_file is not None:
        try:
            tls_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"auth.jwt.jwks_ca_file ({ca_file}): {_reason(exc)}")
    return errors


def _unverifiable(keys: list[Key], algorithms: list[str]) -> list[str]:
    """The error when no key verifies any of `algorithms` (every token would be a 401)."""
    if any(fits(key, alg) for key in keys for alg in algorithms):
        return []
    have = ", ".join(sorted({f"{k.family}{f' ({k.alg})' if k.alg else ''}" for k in keys}))
    return [
        f"auth.jwt.algorithms ({', '.join(algorithms)}): no key of public_key_file or "
        f"jwks_file verifies any of them (keys: {have}); every token would be refused"
    ]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    if (isinstance(exc, ValueError) and "PEM" in str(exc)) or isinstance(exc, TypeError):
        return "not a PEM public key (RSA, EC or EdDSA)"
    return str(exc) or type(exc).__name__


def pem_key(path: Path) -> Key:
    key = load_pem_public_key(path.read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        return Key(None, "RSA", None, key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return Key(None, "EC", None, key)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return Key(None, "OKP", None, key)
    raise ValueError(f"{path}: not an RSA, EC or EdDSA public key")


def jwks_keys(document: Any) -> list[Key]:
    entries = document.get("keys") if isinstance(document, dict) else None
    keys: list[Key] = []
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
            Key(parsed.key_id, entry["kty"], alg if isinstance(alg, str) else None, parsed.key)
        )
    return keys
