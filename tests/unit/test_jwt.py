"""JWT verification with keys generated here: RS256, ES256 (PEM and JWKS), HS256, a JWKS URL."""

from __future__ import annotations

import asyncio
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


def hmac_token(secret: bytes, payload: dict[str, Any]) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(payload).encode())
    signature = hmac.new(secret, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()


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
    assert "unknown kid 'ec-9'" in (await rejected(verifier, unknown)).message


async def test_es256_from_a_pem_file_even_when_the_token_names_a_kid(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(pem(EC))
    verifier = JwtVerifier(settings(public_key_file=path, algorithms=["ES256"]))
    token = jwt.encode(claims(), EC, algorithm="ES256", headers={"kid": "whatever"})
    assert (await verifier.verify(token)).key_id == "alice"
    rs = jwt.encode(claims(), RSA, algorithm="RS256")
    assert "not accepted" in (await rejected(verifier, rs)).message


async def test_rs256_from_a_jwks_file_by_kid_or_as_the_only_rsa_key(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(EC, "ec-1", "ES256"), jwk(RSA, "rsa-1", "RS256")]}))
    verifier = JwtVerifier(settings(jwks_file=path, algorithms=["RS256", "ES256", "PS256"]))
    by_kid = jwt.encode(claims(sub="bob"), RSA, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await verifier.verify(by_kid)).key_id == "bob"
    no_kid = jwt.encode(claims(sub="carol"), RSA, algorithm="RS256")
    assert (await verifier.verify(no_kid)).key_id == "carol"
    # The JWK says RS256, so it must not verify PS256 with the same RSA key.
    ps = jwt.encode(claims(), RSA, algorithm="PS256", headers={"kid": "rsa-1"})
    assert "does not verify PS256" in (await rejected(verifier, ps)).message
    # An EC kid on an RS256 token: the family is wrong, whatever the signature.
    wrong = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "ec-1"})
    assert "does not verify RS256" in (await rejected(verifier, wrong)).message


async def test_a_kidless_token_is_refused_when_several_keys_could_verify_it(
    tmp_path: Path,
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(RSA, "a", "RS256"), jwk(other, "b", "RS256")]}))
    verifier = JwtVerifier(settings(jwks_file=path))
    token = jwt.encode(claims(), RSA, algorithm="RS256")
    assert "no 'kid'" in (await rejected(verifier, token)).message


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
    # pyjwt refuses to sign with a PEM as an HMAC secret, so the attacker's token is built by hand.
    token = hmac_token(pem(RSA), claims())
    assert "does not verify" in (await rejected(rsa_pem_verifier, token)).message


async def test_hmac_tokens_need_the_hmac_secret(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(pem(RSA))
    verifier = JwtVerifier(settings(public_key_file=path, algorithms=["RS256", "HS256"]))
    confused = hmac_token(pem(RSA), claims())
    assert "no HMAC secret" in (await rejected(verifier, confused)).message


async def test_a_too_short_hmac_secret_is_a_401_not_a_warning() -> None:
    verifier = JwtVerifier(settings(algorithms=["HS256"], hmac_secret="short"))
    token = hmac_token(b"short", claims())
    assert "cannot verify HS256" in (await rejected(verifier, token)).message


async def test_nbf_within_the_leeway_is_accepted(rsa_pem_verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 2), RSA, algorithm="RS256")
    assert (await rsa_pem_verifier.verify(token)).tenant == "acme"


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
    for garbage in ("a.b.c", "not-a-jwt", f"{head}.!!!.{sig}", f"{head}.{body}"):
        assert "well-formed" in (await rejected(rsa_pem_verifier, garbage)).message
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


async def test_jwks_url_is_fetched_cached_and_refreshed_on_a_new_kid(idp: tuple[Idp, str]) -> None:
    state, url = idp
    async with aiohttp.ClientSession() as http:
        both = settings(jwks_url=url, algorithms=["RS256", "ES256"])
        verifier = JwtVerifier(both, http, refresh_min_s=0.0)
        first = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "k1"})
        await verifier.verify(first)
        await verifier.verify(first)
        assert state.requests == 1  # cached

        rotated = ec.generate_private_key(ec.SECP256R1())
        state.keys = [jwk(RSA, "k1", "RS256"), jwk(rotated, "k2", "ES256")]
        second = jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": "k2"})
        assert (await verifier.verify(second)).tenant == "acme"
        assert state.requests == 2  # refreshed once for the unknown kid

        bogus = jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": "k3"})
        assert "unknown kid 'k3'" in (await rejected(verifier, bogus)).message
        assert state.requests == 3  # one more try for k3, then the answer


async def test_a_stale_jwks_is_refetched_and_concurrent_misses_share_one_fetch(
    idp: tuple[Idp, str],
) -> None:
    state, url = idp
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(settings(jwks_url=url, jwks_cache_s=0.05), http, refresh_min_s=0)
        tokens = [
            jwt.encode(claims(sub=f"u{i}"), RSA, algorithm="RS256", headers={"kid": "k1"})
            for i in range(10)
        ]
        await asyncio.gather(*(verifier.verify(t) for t in tokens))
        assert state.requests == 1
        await asyncio.sleep(0.1)
        await verifier.verify(jwt.encode(claims(sub="late"), RSA, algorithm="RS256"))
        assert state.requests == 2


async def test_unknown_kid_floods_do_not_hammer_the_idp(idp: tuple[Idp, str]) -> None:
    state, url = idp
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(settings(jwks_url=url), http)
        await verifier.verify(jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "k1"}))
        for i in range(20):
            bad = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": f"x{i}"})
            await rejected(verifier, bad)
    assert state.requests == 1


async def test_an_unreachable_idp_is_401_and_retried_at_most_every_10s() -> None:
    async with aiohttp.ClientSession() as http:
        verifier = JwtVerifier(settings(jwks_url=f"http://127.0.0.1:{free_port()}/jwks"), http)
        token = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "k1"})
        assert "could not be fetched" in (await rejected(verifier, token)).message
        tried = verifier.tried_at
        assert "could not be fetched" in (await rejected(verifier, token)).message
        assert verifier.tried_at == tried  # no second attempt within the interval


async def test_a_verified_token_is_remembered_only_until_it_expires(
    rsa_pem_verifier: JwtVerifier,
) -> None:
    token = jwt.encode(claims(exp=int(time.time()) + 600), RSA, algorithm="RS256")
    first = await rsa_pem_verifier.verify(token)
    assert await rsa_pem_verifier.verify(token) is first
    principal, _ = rsa_pem_verifier.verified[token]
    rsa_pem_verifier.verified[token] = (principal, time.time() - 1)  # as if exp had passed
    assert await rsa_pem_verifier.verify(token) is not first
