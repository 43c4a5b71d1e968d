"""What `llmaas up` prints once it is up: commands that reach this run, whatever its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded.data_dir import DataDir
from gateway.embedded.engine import EngineSpec
from gateway.embedded.up import banner


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
        data=DataDir(tmp_path),
    )
    (admin,) = [line for line in shown.splitlines() if line.strip().startswith("admin")]
    assert admin.split()[1] == "LLMAAS_ADMIN_TOKEN=t0ken"
    assert hint in admin
