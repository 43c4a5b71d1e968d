"""Bearer JWTs through the real gateway over HTTP, keys from an HTTPS JWKS: one token is let in;
every forgery, misfit or malformed tenant is a 401 whose body echoes nothing of the token."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import openai
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL, OTHER, auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import admin_request
from tests.support.idp import jwk, running_idp
from tests.support.logs import collected
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

ISSUER = "https://idp.test"
AUDIENCE = "llmaas"
HMAC_SECRET = "gateway-hmac-secret-0123456789abcdef"
IDP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IDP_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = IDP_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"tenant": "jwt-t", "sub": "bob", "exp": now + 600, "iat": now, "models": [MODEL]}
    merged = {**base, "iss": ISSUER, "aud": AUDIENCE, **overrides}
    return {k: v for k, v in merged.items() if v is not None}


def signed(key: Any = IDP_KEY, kid: str = "k1", headers: Any = None, **overrides: Any) -> str:
    return jwt.encode(
        claims(**overrides), key, algorithm="RS256", headers={"kid": kid, **(headers or {})}
    )


def hs256_with(secret: bytes, payload: dict[str, Any]) -> str:
    """Built by hand: pyjwt refuses to use a PEM as an HMAC secret."""
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(payload).encode())
    signature = hmac.new(secret, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    tmp = tmp_path_factory.mktemp("jwt")
    async with (
        running_idp(tmp) as idp,
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL, OTHER])) as sim,
    ):
        idp.keys = [jwk(IDP_KEY, "k1", "RS256"), jwk(IDP_OTHER, "k2", "RS256")]
        jwt_settings = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["RS256", "HS256"],
            "jwks_url": idp.url(),
            "jwks_ca_file": str(idp.ca_file),
            "hmac_secret": HMAC_SECRET,
        }
        settings = auth_settings(sim, redis_url, tmp / "spill")
        settings = settings.model_validate({**settings.model_dump(), "auth": {"jwt": jwt_settings}})
        async with serve_asgi(create_app(settings)) as url:
            yield url


async def test_a_token_from_the_idp_is_let_in(gateway: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=signed()) as oai:
        assert [m.id for m in (await oai.models.list()).data] == [MODEL]
        reply = await oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content
    hs = jwt.encode(claims(), HMAC_SECRET, algorithm="HS256")
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=hs) as oai:
        assert [m.id for m in (await oai.models.list()).data] == [MODEL]


TENANT = "'tenant' claim"
# Each forgery or misfit, and the reason the 401 must give (so none passes for another reason).
REJECTED: dict[str, tuple[Callable[[], str], str]] = {
    "alg_none": (lambda: jwt.encode(claims(), "", algorithm="none"), "not accepted"),
    "hs256_signed_with_the_rsa_public_key": (
        lambda: hs256_with(PUBLIC_PEM, claims()),
        "signature does not verify",
    ),
    "expired": (lambda: signed(exp=int(time.time()) - 120), "expired"),
    "wrong_aud": (lambda: signed(aud="someone-else"), "wrong audience"),
    "wrong_iss": (lambda: signed(iss="https://evil.test"), "wrong issuer"),
    "no_exp": (lambda: signed(exp=None), "'exp' claim is required"),
    "no_iss": (lambda: signed(iss=None), "'iss' claim is required"),
    "no_aud": (lambda: signed(aud=None), "'aud' claim is required"),
    "unknown_kid_signed_by_an_attacker": (lambda: signed(ATTACKER, kid="k9"), "unknown 'kid'"),
    "known_kid_signed_by_another_key": (
        lambda: signed(ATTACKER, kid="k1"),
        "signature does not verify",
    ),
    "kid_of_the_other_idp_key": (lambda: signed(IDP_KEY, kid="k2"), "signature does not verify"),
    "crit_unknown_extension": (
        lambda: signed(headers={"crit": ["x-mfa"], "x-mfa": "yes"}),
        "'crit'",
    ),
    "tenant_empty": (lambda: signed(tenant=""), TENANT),
    "tenant_too_long": (lambda: signed(tenant="t" * 65), TENANT),
    "tenant_bad_characters": (lambda: signed(tenant="acme/../../admin<script>"), TENANT),
    "tenant_not_a_string": (lambda: signed(tenant=1234567), TENANT),
}


def substrings(text: str, length: int = 6) -> set[str]:
    return {text[i : i + length] for i in range(len(text) - length + 1)}


@pytest.mark.parametrize("case", list(REJECTED))
async def test_a_bad_token_is_401_and_the_body_echoes_none_of_it(gateway: str, case: str) -> None:
    make, reason = REJECTED[case]
    token = make()
    with collected() as logs:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gateway}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            body = await resp.text()
    assert resp.status == 401, body
    error = json.loads(body)["error"]
    assert reason in error["message"]
    assert error["code"] == ("token_expired" if case == "expired" else "invalid_token")
    assert not substrings(token) & substrings(body)
    assert "acme/../" not in body
    assert "1234567" not in body
    signature = token.rsplit(".", 1)[1]
    assert not any(signature and signature in str(r.getMessage()) for r in logs.records)


async def test_the_openai_client_sees_an_authentication_error(gateway: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway}/v1", api_key=signed(ATTACKER, kid="k1"), max_retries=0
    ) as oai:
        with pytest.raises(openai.AuthenticationError) as info:
            await oai.models.list()
    assert info.value.code == "invalid_token"


HI = [{"role": "user", "content": "hi"}]


async def _chat(gateway: str, token: str) -> int:
    """One chat completion with `token`: its status (200, or the refusal's)."""
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=token, max_retries=0) as oai:
        try:
            await oai.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


async def test_a_subjects_limits_come_from_its_claims_and_count_apart_from_a_key(
    gateway: str,
) -> None:
    """A JWT's `rpm` claim limits its subject; a subject spelled like one of its tenant's API key
    ids (12 hex digits) has counters of its own, not the key's (they were shared until
    2026-12-04: the key's request made the token's first one a 429)."""
    async with aiohttp.ClientSession() as http:
        status, _ = await admin_request(http, gateway, "PUT", "/tenants/jwt-t", {})
        assert status == 200
        status, made = await admin_request(
            http, gateway, "POST", "/keys", {"tenant": "jwt-t", "rpm": 1}
        )
        assert status == 201
    key, key_id = made["key"], made["id"]
    assert await _chat(gateway, key) == 200
    assert await _chat(gateway, key) == 429  # the key's rpm of 1 holds
    token = signed(sub=key_id, rpm=1)
    assert await _chat(gateway, token) == 200  # its own counter: the key's request is not in it
    assert await _chat(gateway, token) == 429  # and the claim's rpm of 1 holds for the subject
    assert await _chat(gateway, signed(sub="someone-else", rpm=1)) == 200  # another subject
