"""JWT settings the gateway refuses to start with: no issuer or audience, a plain-http JWKS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.jwt_settings import JwtSettings
from gateway.settings import Settings

SOURCES: list[dict[str, Any]] = [
    {"public_key_file": "/keys/idp.pem"},
    {"jwks_file": "/keys/jwks.json"},
    {"jwks_url": "https://idp.example.com/jwks"},
    {"hmac_secret": "shared-hmac-secret-0123456789abcdef"},
]


def gateway_settings(jwt: dict[str, Any]) -> Settings:
    return Settings.model_validate({"dev_mode": True, "auth": {"jwt": jwt}})


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, ["auth.jwt.issuer", "auth.jwt.audience"]),
        ({"issuer": "https://idp.example.com"}, ["auth.jwt.audience"]),
        ({"audience": "llmaas"}, ["auth.jwt.issuer"]),
        ({"issuer": "", "audience": "llmaas"}, ["auth.jwt.issuer"]),
    ],
)
def test_a_key_source_without_issuer_and_audience_is_refused(
    source: dict[str, Any], given: dict[str, Any], missing: list[str]
) -> None:
    with pytest.raises(ValidationError) as info:
        gateway_settings({**source, **given})
    message = str(info.value)
    for name in ("auth.jwt.issuer", "auth.jwt.audience"):
        assert (name in message) == (name in missing)


def test_with_issuer_and_audience_jwts_are_on() -> None:
    jwt = {"issuer": "https://idp.example.com", "audience": "llmaas", **SOURCES[0]}
    assert gateway_settings(jwt).auth.jwt.enabled


def test_jwts_off_need_neither() -> None:
    assert not gateway_settings({}).auth.jwt.enabled


@pytest.mark.parametrize(
    "url", ["http://idp.example.com/jwks", "HTTP://idp.example.com/jwks", "ftp://x", "idp/jwks"]
)
def test_a_jwks_url_that_is_not_https_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match=r"auth\.jwt\.jwks_url must be an https:// URL"):
        JwtSettings(jwks_url=url, issuer="https://idp.example.com", audience="llmaas")


def test_the_jwks_ca_file_is_a_path(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    jwt = JwtSettings(
        jwks_url="https://idp.internal/jwks", jwks_ca_file=ca, issuer="i", audience="a"
    )
    assert jwt.jwks_ca_file == ca


@pytest.mark.parametrize(
    ("jwt", "says"),
    [
        ({"algorithms": ["RS999"], **SOURCES[0]}, r"unknown \['RS999'\]"),
        ({"algorithms": ["none"], **SOURCES[0]}, r"unknown \['none'\]"),
        ({"algorithms": ["HS256"], **SOURCES[0]}, "no key for any of the algorithms"),
        ({"algorithms": ["RS256"], **SOURCES[3]}, "no key for any of the algorithms"),
        ({"algorithms": ["HS256"], "hmac_secret": "short"}, "at least 32 bytes"),
    ],
)
def test_jwts_that_could_never_verify_are_refused(jwt: dict[str, Any], says: str) -> None:
    """Each used to start, and then refuse every token with a 401."""
    with pytest.raises(ValidationError, match=says):
        gateway_settings({"issuer": "https://idp.example.com", "audience": "llmaas", **jwt})


def test_algorithms_with_a_key_each_are_enough() -> None:
    both = {"algorithms": ["RS256", "HS256"], **SOURCES[0]}  # HS256 tokens: no secret, a 401
    assert gateway_settings({"issuer": "i", "audience": "a", **both}).auth.jwt.enabled
