from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "port: 9000\nmodels:\n  - name: m\n    engines: [http://127.0.0.1:8001/]\n"
        "upstream:\n  connect_timeout_s: 2\n"
    )
    monkeypatch.setenv("LLMAAS_PORT", "9100")
    monkeypatch.setenv("LLMAAS_UPSTREAM__RESPONSE_TIMEOUT_S", "7")
    settings = load_settings(path)
    assert settings.port == 9100
    assert settings.upstream.connect_timeout_s == 2
    assert settings.upstream.response_timeout_s == 7
    assert settings.models[0].engines == ["http://127.0.0.1:8001"]


def test_typos_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("prot: 9000\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(path)
    with pytest.raises(ValidationError, match="http://"):
        load_settings(None, models=[{"name": "m", "engines": ["127.0.0.1:8001"]}])
    with pytest.raises(ValidationError, match="duplicate"):
        load_settings(None, models=[{"name": "m", "engines": ["http://a"]}] * 2)


def test_shipped_configs_load() -> None:
    for path in Path("configs").glob("*.yaml"):
        load_settings(path)
