"""Who may see the operational detail: the admin token or the metrics token, nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from gateway.api.health import ops_token_given
from gateway.settings import Settings

ADMIN = "admin-token-0123456789abcdef"
SCRAPER = "metrics-token-0123456789abcdef"


def settings(**extra: object) -> Settings:
    return Settings.model_validate({"admin_token": ADMIN, "auth": {"required": False}, **extra})


def request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/metrics", "headers": headers})


@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        (f"Bearer {ADMIN}", True),
        (f"bearer {SCRAPER}", True),
        (None, False),
        ("", False),
        ("Bearer ", False),
        (f"Basic {ADMIN}", False),
        (f"Bearer {ADMIN}x", False),
        (f"Bearer {SCRAPER[:-1]}", False),
    ],
)
def test_admin_or_metrics_token_is_required(authorization: str | None, allowed: bool) -> None:
    assert ops_token_given(request(authorization), settings(metrics_token=SCRAPER)) is allowed


def test_without_a_metrics_token_only_the_admin_token_opens() -> None:
    plain = settings()
    assert ops_token_given(request(f"Bearer {ADMIN}"), plain)
    assert not ops_token_given(request("Bearer "), plain)
    assert not ops_token_given(request(f"Bearer {SCRAPER}"), plain)


def test_a_short_metrics_token_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="metrics_token must be at least 16 characters"):
        settings(metrics_token="short")
    assert Settings.model_validate({"dev_mode": True, "metrics_token": "short"}).metrics_token
