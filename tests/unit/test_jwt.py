"""JWT verification with keys generated here: RS256, ES256 (PEM and JWKS), HS256, a JWKS URL."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwt import JwtVerifier
from gateway.auth.principal import Limits
from gateway.errors import Unauthorized
from gateway.netutil import free_port
from gateway.settings import JwtSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
HMAC_SECRET = "shared-hmac-secret-0123456789abcdef"


def pem(private: Any) -> bytes:
    public: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public


def jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "tenant": "acme",
        "sub": "alice",
        "exp": now + 600,
        "iat": now,
        "aud": "llmaas",
        "iss": "https://idp.test",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def settings(**fields: Any) -> JwtSettings:
    values = {"issuer": "https://idp.test", "audience": "llmaas", "leeway_s": 5, **fields}
    return JwtSettings.model_validate(values)


async def rejected(verifier: JwtVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    assert info.value.status_code == 401
    return info.value


@pytest.fixture
def rsa_pem_verifier(tmp_path: Path) -> JwtVerifier:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem(RSA))
    return JwtVerifier(
        settings(public_key_file=path, algorithms=["RS256", "HS256"], hmac_secret=HMAC_SECRET)
    )


async def test_rs256_pem_token_becomes_a_principal(rsa_pem_verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(models=["m1"], rpm=60, tpm=1000), RSA, algorithm="RS256")
    principal = await rsa_pem_verifier.verify(token)
    assert principal.tenant == "acme"
    assert principal.key_id == "alice"
    assert principal.source == "jwt"
    assert principal.key_models == frozenset({"m1"})
    assert principal.key_limits == Limits(rpm=60, tpm=1000, max_concurrency=None)


async def test_es256_from_a_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(EC, "ec-1", "ES256"), jwk(RSA, "rsa-1", "RS256")]}))
    verifier = JwtVerifier(settings(jwks_file=path))
    token = jwt.encode(claims(), EC, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(token)).tenant == "acme"
    unknown = jwt.encode(claims(), EC, algorithm="ES256", headers={"kid": "ec-9"})
    assert (await rejected(verifier, unknown)).code == "unknown_kid"


async def test_hs256_with_the_configured_secret() -> None:
    verifier = JwtVerifier(settings(algorithms=["HS256"], hmac_secret=HMAC_SECRET))
    token = jwt.encode(claims(), HMAC_SECRET, algorithm="HS256")
    assert (await verifier.verify(token)).key_id == "alice"


async def test_alg_none_is_refused_even_when_listed(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem(RSA))
    verifier = JwtVerifier(settings(public_key_file=path, algorithms=["RS256", "none"]))
    token = jwt.encode(claims(), "", algorithm="none")
    assert "not accepted" in (await rejected(verifier, token)).message


async def test_algorithm_confusion_hmac_signed_with_the_public_key(
    rsa_pem_verifier: JwtVerifier,
) -> None:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    signing_input = header + b"." + payload
    signature = hmac.new(pem(RSA), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    assert "does not verify" in (await rejected(rsa_pem_verifier, token)).message


@pytest.mark.parametrize(
    ("overrides", "needle", "code"),
    [
        ({"exp": int(time.time()) - 60}, "expired", "token_expired"),
        ({"nbf": int(time.time()) + 600}, "not valid yet", "invalid_token"),
        ({"aud": "someone-else"}, "audience", "invalid_token"),
        ({"iss": "https://evil.test"}, "issuer", "invalid_token"),
        ({"tenant": None}, "'tenant' claim", "invalid_token"),
        ({"exp": None}, "'exp' claim is required", "invalid_token"),
        ({"models": "m1"}, "'models' claim", "invalid_token"),
        ({"rpm": -1}, "'rpm' claim", "invalid_token"),
    ],
)
async def test_claim_problems_are_401_naming_the_problem(
    rsa_pem_verifier: JwtVerifier, overrides: dict[str, Any], needle: str, code: str
) -> None:
    token = jwt.encode(claims(**overrides), RSA, algorithm="RS256")
    error = await rejected(rsa_pem_verifier, token)
    assert needle in error.message
    assert error.code == code


async def test_tampered_and_garbage_tokens(rsa_pem_verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(), RSA, algorithm="RS256")
    head, body, sig = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(tenant="other")).encode()).decode()
    assert "does not verify" in (await rejected(rsa_pem_verifier, f"{head}.{forged}.{sig}")).message
    assert "well-formed" in (await rejected(rsa_pem_verifier, "a.b.c")).message
    assert body


class Idp:
    """A tiny JWKS endpoint whose keys can be rotated; counts its requests."""

    def __init__(self) -> None:
        self.keys = [jwk(RSA, "k1", "RS256")]
        self.requests = 0

    async def handle(self, _: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def idp() -> AsyncIterator[tuple[Idp, str]]:
    state = Idp()
    app = web.Application()
    app.router.add_get("/jwks", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield state, f"http://127.0.0.1:{port}/jwks"
    finally:
        await runner.cleanup()


async def test_jwks_url_is_fetched_cached_and_refreshed_on_a_new_kid(
    idp: tuple[Idp, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = idp
    monkeypatch.setattr("gateway.auth.jwt.REFRESH_MIN_S", 0.0)
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(settings(jwks_url=url), http)
        first = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "k1"})
        await verifier.verify(first)
        await verifier.verify(first)
        assert state.requests == 1  # cached

        rotated = ec.generate_private_key(ec.SECP256R1())
        state.keys = [jwk(RSA, "k1", "RS256"), jwk(rotated, "k2", "ES256")]
        verifier.algorithms.append("ES256")
        second = jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": "k2"})
        assert (await verifier.verify(second)).tenant == "acme"
        assert state.requests == 2  # refreshed once for the unknown kid

        bogus = jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": "k3"})
        assert (await rejected(verifier, bogus)).code == "unknown_kid"


async def test_unknown_kid_floods_do_not_hammer_the_idp(idp: tuple[Idp, str]) -> None:
    state, url = idp
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(settings(jwks_url=url), http)
        await verifier.verify(jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "k1"}))
        for i in range(20):
            bad = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": f"x{i}"})
            await rejected(verifier, bad)
    assert state.requests == 1


async def test_a_verified_token_is_remembered_only_until_it_expires(
    rsa_pem_verifier: JwtVerifier,
) -> None:
    token = jwt.encode(claims(exp=int(time.time()) + 600), RSA, algorithm="RS256")
    first = await rsa_pem_verifier.verify(token)
    assert await rsa_pem_verifier.verify(token) is first
    principal, _ = rsa_pem_verifier.verified[token]
    rsa_pem_verifier.verified[token] = (principal, time.time() - 1)  # as if exp had passed
    assert await rsa_pem_verifier.verify(token) is not first
