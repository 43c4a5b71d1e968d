"""What `llmaas up` prints once it is up: commands that reach this run, whatever its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded.banner import banner
from gateway.embedded.data_dir import DataDir
from gateway.embedded.dev_credentials import admin_token
from gateway.embedded.engine import EngineSpec
from gateway.embedded.prepare import Prepared
from gateway.embedded.up import up_settings


@pytest.mark.parametrize(
    ("base", "hint"),
    [
        ("http://127.0.0.1:8080", "(llmaas keys create --tenant NAME)"),
        # the client commands' default is :8080: the hint sent the token to another gateway
        ("http://127.0.0.1:8081", "(LLMAAS_URL=http://127.0.0.1:8081 llmaas keys create"),
    ],
)
def test_the_admin_hint_reaches_this_gateway(tmp_path: Path, base: str, hint: str) -> None:
    spec = EngineSpec(tmp_path / "python", tmp_path / "model", "m", 9001, tmp_path / "log")
    shown = banner(
        base,
        redis_url="redis://127.0.0.1:6399/0",
        spec=spec,
        key="sk-llmaas-k-s",
        admin_token="t0ken",
        kept_token="t0ken",
        data=DataDir(tmp_path),
    )
    (admin,) = [line for line in shown.splitlines() if line.strip().startswith("admin")]
    assert admin.split()[1] == "LLMAAS_ADMIN_TOKEN=t0ken"
    assert hint in admin


@pytest.mark.parametrize(
    ("environment", "said"),
    [
        ({}, "(keys, files, jobs, usage; this key and token again next run)"),
        (
            {"LLMAAS_ADMIN_TOKEN": "from-the-environment"},
            "(keys, files, jobs, usage; this key again next run; the token is "
            "LLMAAS_ADMIN_TOKEN's, not kept)",
        ),
    ],
)
def test_the_token_is_said_to_come_again_only_when_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], said: str
) -> None:
    """Found 2026-12-07: the banner said the admin token would be the same next run when
    LLMAAS_ADMIN_TOKEN gave it, which wins over the kept one and is not written: the next run
    without it showed the kept one. As `llmaas up` builds it: the kept token (a first run: a
    new one), the settings with the environment's winning, the banner of what they chose."""
    monkeypatch.delenv("LLMAAS_ADMIN_TOKEN", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    data = DataDir(tmp_path / "data")
    kept = admin_token(None)
    settings = up_settings(
        gateway_port=8080,
        redis_url="redis://127.0.0.1:6399/0",
        admin_token=kept,
        engine_url="http://127.0.0.1:9001",
        data=data,
        ready=Prepared(tmp_path / "python", tmp_path / "chat", tmp_path / "embedding"),
    )
    spec = EngineSpec(tmp_path / "python", tmp_path / "model", "m", 9001, tmp_path / "log")
    shown = banner(
        "http://127.0.0.1:8080",
        redis_url="redis://127.0.0.1:6399/0",
        spec=spec,
        key="sk-llmaas-k-s",
        admin_token=settings.admin_token or "",
        kept_token=kept,
        data=data,
    )
    lines = [line.split() for line in shown.splitlines()]
    (admin,) = [line for line in lines if line[:1] == ["admin"]]
    (data_line,) = [" ".join(line[2:]) for line in lines if line[:1] == ["data"]]
    assert admin[1] == f"LLMAAS_ADMIN_TOKEN={environment.get('LLMAAS_ADMIN_TOKEN', kept)}"
    assert data_line == said
