"""The JWKS URL: fetched over real HTTPS (a CA made here), cached, refreshed for a new kid, and
bounded: no redirects, at most 1 MiB, a timeout, the configured CA only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwt import JwtVerifier
from gateway.errors import Unauthorized
from gateway.jwt_settings import JwtSettings
from gateway.netutil import free_port
from tests.support.idp import Idp, jwk, running_idp

pytestmark = pytest.mark.asyncio(loop_scope="session")

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"tenant": "acme", "sub": "alice", "exp": now + 600, "iat": now}
    return {**base, "aud": "llmaas", "iss": "https://idp.test", **overrides}


def token(kid: str = "k1", key: Any = RSA, alg: str = "RS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def settings(idp: Idp, path: str = "/jwks", **fields: Any) -> JwtSettings:
    values = {"issuer": "https://idp.test", "audience": "llmaas", "jwks_url": idp.url(path)}
    return JwtSettings.model_validate({"jwks_ca_file": idp.ca_file, **values, **fields})


async def rejected(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    assert info.value.status_code == 401
    return info.value.message


@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[Idp]:
    async with running_idp(tmp_path) as state:
        state.keys = [jwk(RSA, "k1", "RS256")]
        yield state


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_jwks_url_is_fetched_cached_and_refreshed_on_a_new_kid(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    both = settings(idp, algorithms=["RS256", "ES256"])
    verifier = JwtVerifier(both, http, refresh_min_s=0.0)
    first = token()
    await verifier.verify(first)
    await verifier.verify(first)
    assert idp.requests == 1  # cached

    rotated = ec.generate_private_key(ec.SECP256R1())
    idp.keys = [jwk(RSA, "k1", "RS256"), jwk(rotated, "k2", "ES256")]
    second = token("k2", rotated, "ES256")
    assert (await verifier.verify(second)).tenant == "acme"
    assert idp.requests == 2  # refreshed once for the unknown kid

    assert "unknown 'kid'" in await rejected(verifier, token("k3", rotated, "ES256"))
    assert idp.requests == 3  # one more try for k3, then the answer


async def test_a_stale_jwks_is_refetched_and_concurrent_misses_share_one_fetch(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    verifier = JwtVerifier(settings(idp, jwks_cache_s=0.05), http, refresh_min_s=0)
    await asyncio.gather(*(verifier.verify(token(sub=f"u{i}")) for i in range(10)))
    assert idp.requests == 1
    await asyncio.sleep(0.1)
    await verifier.verify(jwt.encode(claims(sub="late"), RSA, algorithm="RS256"))
    assert idp.requests == 2


async def test_unknown_kid_floods_do_not_hammer_the_idp(
    idp: Idp, http: aiohttp.ClientSession
) -> None:
    verifier = JwtVerifier(settings(idp), http)
    await verifier.verify(token())
    for i in range(20):
        await rejected(verifier, token(f"x{i}"))
    assert idp.requests == 1


async def test_an_unreachable_idp_is_401_and_retried_at_most_every_10s(
    http: aiohttp.ClientSession,
) -> None:
    url = f"https://127.0.0.1:{free_port()}/jwks"
    values = {"issuer": "https://idp.test", "audience": "llmaas", "jwks_url": url}
    verifier = JwtVerifier(JwtSettings.model_validate(values), http)
    assert "could not be fetched" in await rejected(verifier, token())
    tried = verifier.tried_at
    assert "could not be fetched" in await rejected(verifier, token())
    assert verifier.tried_at == tried  # no second attempt within the interval


async def test_a_redirect_is_not_followed(
    idp: Idp, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = JwtVerifier(settings(idp, "/redirect"), http)
    assert "could not be fetched" in await rejected(verifier, token())
    assert "HTTP 302" in caplog.text
    assert idp.requests == 1  # the 302 itself; /jwks was never asked


@pytest.mark.parametrize("path", ["/huge", "/declared-huge"])
async def test_a_jwks_over_1_mib_is_refused(
    idp: Idp, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    verifier = JwtVerifier(settings(idp, path), http)
    assert "could not be fetched" in await rejected(verifier, token())
    assert "over 1048576 bytes" in caplog.text
    assert verifier.fetched_keys == []


async def test_a_slow_idp_is_given_up_on_after_the_timeout(
    idp: Idp, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = JwtVerifier(settings(idp, "/slow"), http, fetch_timeout_s=0.3)
    started = time.monotonic()
    assert "could not be fetched" in await rejected(verifier, token())
    assert time.monotonic() - started < 2.0
    assert "Timeout" in caplog.text


async def test_a_server_outside_the_configured_trust_is_refused(
    idp: Idp, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    system_trust = settings(idp, jwks_ca_file=None)  # the test CA is not a system CA
    assert "could not be fetched" in await rejected(JwtVerifier(system_trust, http), token())
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert idp.requests == 0  # the TLS handshake failed before any request
