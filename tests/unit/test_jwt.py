"""JWT verification with keys generated here: RS256, ES256 (PEM and JWKS), HS256."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from gateway.auth.jwt import JwtVerifier
from gateway.auth.principal import Limits
from gateway.errors import Unauthorized
from gateway.jwt_settings import JwtSettings
from tests.support.idp import jwk

pytestmark = pytest.mark.asyncio(loop_scope="session")

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
HMAC_SECRET = "shared-hmac-secret-0123456789abcdef"


def pem(private: Any) -> bytes:
    public: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public


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
    assert "unknown 'kid'" in (await rejected(verifier, unknown)).message


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
    assert "does not verify PS256 tokens" in (await rejected(verifier, ps)).message
    # An EC kid on an RS256 token: the family is wrong, whatever the signature.
    wrong = jwt.encode(claims(), RSA, algorithm="RS256", headers={"kid": "ec-1"})
    assert "does not verify RS256 tokens" in (await rejected(verifier, wrong)).message


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
    with pytest.raises(ValidationError, match=r"unknown \['none'\]"):  # listed: a config error
        settings(public_key_file=path, algorithms=["RS256", "none"])
    listed = JwtSettings.model_construct(**{**settings(public_key_file=path).__dict__})
    listed.algorithms = ["RS256", "none"]  # and were it let through, the verifier refuses it
    token = jwt.encode(claims(), "", algorithm="none")
    assert "not accepted" in (await rejected(JwtVerifier(listed), token)).message


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


async def test_a_too_short_hmac_secret_is_refused_and_never_verifies() -> None:
    with pytest.raises(ValidationError, match="hmac_secret must be at least 32 bytes"):
        settings(algorithms=["HS256"], hmac_secret="short")
    with pytest.raises(ValidationError, match="at least 64 bytes for HS256, HS512"):
        settings(algorithms=["HS256", "HS512"], hmac_secret="s" * 40)
    short = JwtSettings.model_construct(
        **{**settings(algorithms=["HS256"], hmac_secret=HMAC_SECRET).__dict__}
    )
    short.algorithms, short.hmac_secret = ["HS256"], "short"  # let through: a 401, no warning
    verifier = JwtVerifier(short)
    token = hmac_token(b"short", claims())
    assert "cannot verify HS256" in (await rejected(verifier, token)).message


async def test_nbf_within_the_leeway_is_accepted(rsa_pem_verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 2), RSA, algorithm="RS256")
    assert (await rsa_pem_verifier.verify(token)).tenant == "acme"


@dataclass(frozen=True)
class FromNow:
    """A claim time this many seconds from when the test runs."""

    seconds: int


@dataclass(frozen=True)
class FromNowText(FromNow):
    """The same, as a string of digits (RFC 7519's NumericDate is a JSON number)."""


@pytest.mark.parametrize(
    ("overrides", "needle", "code"),
    [
        ({"exp": FromNow(-60)}, "expired", "token_expired"),
        ({"nbf": FromNow(600)}, "not valid yet", "invalid_token"),
        ({"aud": "someone-else"}, "audience", "invalid_token"),
        ({"iss": "https://evil.test"}, "issuer", "invalid_token"),
        ({"tenant": None}, "'tenant' claim", "invalid_token"),
        ({"exp": None}, "'exp' claim is required", "invalid_token"),
        ({"iss": None}, "'iss' claim is required", "invalid_token"),
        ({"aud": None}, "'aud' claim is required", "invalid_token"),
        ({"models": "m1"}, "'models' claim", "invalid_token"),
        ({"rpm": -1}, "'rpm' claim", "invalid_token"),
        ({"exp": "soon"}, "the 'exp' claim must be a number (NumericDate).", "invalid_token"),
        ({"nbf": "later"}, "the 'nbf' claim must be a number (NumericDate).", "invalid_token"),
        ({"iat": "x"}, "the 'iat' claim must be a number (NumericDate).", "invalid_token"),
        # pyjwt reads them with int(): these passed
        ({"exp": FromNowText(600)}, "the 'exp' claim must be a number", "invalid_token"),
        ({"nbf": FromNowText(-60)}, "the 'nbf' claim must be a number", "invalid_token"),
        ({"iat": FromNowText(-60)}, "the 'iat' claim must be a number", "invalid_token"),
        ({"nbf": True}, "the 'nbf' claim must be a number", "invalid_token"),
        ({"sub": 7}, "the 'sub' claim must be a string.", "invalid_token"),
        # the usage records' key_id: an escape reached terminals, U+2028 split a CSV record
        (
            {"sub": "line\u2028sep"},
            "'sub' claim must be a non-empty string of at most 256 printable",
            "invalid_token",
        ),
        ({"sub": "\x1b[2Jx"}, "'sub' claim must be a non-empty string", "invalid_token"),
        ({"sub": "s" * 257}, "'sub' claim must be a non-empty string", "invalid_token"),
        ({"jti": 5}, "the 'jti' claim must be a string.", "invalid_token"),
    ],
)
async def test_claim_problems_are_401_naming_the_problem(
    rsa_pem_verifier: JwtVerifier, overrides: dict[str, Any], needle: str, code: str
) -> None:
    now = int(time.time())  # times are taken here, not when the module was collected
    resolved = {k: _resolved(v, now) for k, v in overrides.items()}
    token = jwt.encode(claims(**resolved), RSA, algorithm="RS256")
    error = await rejected(rsa_pem_verifier, token)
    assert needle in error.message
    assert error.code == code


def _resolved(value: Any, now: int) -> Any:
    if isinstance(value, FromNowText):
        return str(now + value.seconds)
    return now + value.seconds if isinstance(value, FromNow) else value


async def test_tampered_and_garbage_tokens(rsa_pem_verifier: JwtVerifier) -> None:
    token = jwt.encode(claims(), RSA, algorithm="RS256")
    head, body, sig = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(tenant="other")).encode()).decode()
    assert "does not verify" in (await rejected(rsa_pem_verifier, f"{head}.{forged}.{sig}")).message
    for garbage in ("a.b.c", "not-a-jwt", f"{head}.!!!.{sig}", f"{head}.{body}"):
        assert "well-formed" in (await rejected(rsa_pem_verifier, garbage)).message
    assert body


async def test_a_verified_token_is_remembered_only_until_it_expires(
    rsa_pem_verifier: JwtVerifier,
) -> None:
    token = jwt.encode(claims(exp=int(time.time()) + 600), RSA, algorithm="RS256")
    first = await rsa_pem_verifier.verify(token)
    assert await rsa_pem_verifier.verify(token) is first
    principal, _ = rsa_pem_verifier.verified[token]
    rsa_pem_verifier.verified[token] = (principal, time.time() - 1)  # as if exp had passed
    assert await rsa_pem_verifier.verify(token) is not first


@pytest.mark.parametrize("crit", [["x-policy"], ["b64"], [], "x-policy"])
async def test_a_crit_header_is_refused(rsa_pem_verifier: JwtVerifier, crit: Any) -> None:
    headers = {"crit": crit, "x-policy": "require-mfa", "b64": True}
    token = jwt.encode(claims(), RSA, algorithm="RS256", headers=headers)
    assert "'crit'" in (await rejected(rsa_pem_verifier, token)).message


@pytest.mark.parametrize(
    "tenant",
    ["", "t" * 65, "acme corp", "../acme", "-acme", "acme\n", "acmé", 42, ["acme"], {"id": "a"}],
)
async def test_a_malformed_tenant_claim_is_refused_without_echoing_it(
    rsa_pem_verifier: JwtVerifier, tenant: Any
) -> None:
    token = jwt.encode(claims(tenant=tenant), RSA, algorithm="RS256")
    error = await rejected(rsa_pem_verifier, token)
    assert "'tenant' claim" in error.message
    assert error.code == "invalid_token"
    if isinstance(tenant, str) and len(tenant) > 2:
        assert tenant.strip() not in error.message


async def test_a_tenant_claim_of_64_characters_is_accepted(rsa_pem_verifier: JwtVerifier) -> None:
    tenant = "a" + "b.c_d-9" * 9
    token = jwt.encode(claims(tenant=tenant), RSA, algorithm="RS256")
    assert (await rsa_pem_verifier.verify(token)).tenant == tenant


async def test_header_values_are_not_echoed(rsa_pem_verifier: JwtVerifier) -> None:
    token = hmac_token(b"whatever", claims())
    head = json.dumps({"alg": "HS999-<script>", "kid": "kid-<script>"}).encode()
    forged = jwt.utils.base64url_encode(head).decode() + token[token.index(".") :]
    assert "<script>" not in (await rejected(rsa_pem_verifier, forged)).message
