from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.settings_load import ConfigError, load_settings


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "dev_mode: true\nport: 9000\nmodels:\n  - name: m\n    engines: [http://127.0.0.1:8001/]\n"
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
    path.write_text("dev_mode: true\nprot: 9000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(path)
    with pytest.raises(ConfigError, match="http://"):
        load_settings(None, dev_mode=True, models=[{"name": "m", "engines": ["127.0.0.1:8001"]}])
    with pytest.raises(ConfigError, match="duplicate"):
        load_settings(None, dev_mode=True, models=[{"name": "m", "engines": ["http://a"]}] * 2)
    with pytest.raises(ConfigError, match=r"fine_tuning\.base_models needs files\.enabled"):
        load_settings(
            None, dev_mode=True, files={"enabled": False}, fine_tuning={"base_models": {"m": "/w"}}
        )
    with pytest.raises(ConfigError, match=r"lora_rank \(16\) is above fine_tuning\.max_lora_rank"):
        load_settings(None, dev_mode=True, fine_tuning={"lora_rank": 16, "max_lora_rank": 8})
    for token in ("admin-tökén-0123456789", "admin token\twith a tab"):  # never matched
        with pytest.raises(ConfigError, match="admin_token must be printable ASCII"):
            load_settings(None, dev_mode=True, admin_token=token)
    for body in (4 * 1024 * 1024, 8 * 1024 * 1024):  # the example's, and one an image filled
        with pytest.raises(ConfigError, match=rf"max_body_bytes \({body}\) leaves less than"):
            load_settings(None, dev_mode=True, max_body_bytes=body)
    with pytest.raises(ConfigError, match=r"max_bytes_per_tenant \(100\) is below files\.max_f"):
        load_settings(None, dev_mode=True, files={"max_bytes_per_tenant": 100})
    for origin in ("https://app.example.com/", "app.example.com", " https://a.example"):
        with pytest.raises(ConfigError, match=r"cors\.allow_origins\[0\]: not an origin"):
            load_settings(None, dev_mode=True, cors={"allow_origins": [origin]})


def test_shipped_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMAAS_ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("LLMAAS_KEY_PEPPER", "p" * 32)
    paths = list(Path("configs").glob("*.yaml"))
    assert paths
    for path in paths:
        load_settings(path)


def test_secrets_are_required_and_strong_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match=r"admin_token.*key_pepper.*redis_url"):
        load_settings(None)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(None, admin_token="short", key_pepper="p" * 20, redis_url="redis://x")
    anonymous = load_settings(None, admin_token="a" * 16, auth={"required": False})
    assert anonymous.redis_url is None


def test_dev_mode_generates_an_admin_token() -> None:
    token = load_settings(None, dev_mode=True).admin_token
    assert token is not None
    assert len(token) >= 16


def test_an_environment_variable_that_is_not_json_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A list or a mapping in an LLMAAS_* variable is JSON; one that is not was pydantic-settings'
    SettingsError, a traceback out of `llmaas serve`, not a line naming the variable."""
    monkeypatch.setenv("LLMAAS_AUTH__JWT__ALGORITHMS", "RS256,s3cr3t-looking")
    monkeypatch.setenv("LLMAAS_AUTH__JWT__HMAC_SECRET", "not json, and a string: fine")
    with pytest.raises(ConfigError) as refused:
        load_settings(None, dev_mode=True)
    message = str(refused.value)
    assert message.startswith("environment: auth: LLMAAS_AUTH__JWT__ALGORITHMS is not valid JSON")
    assert "HMAC_SECRET" not in message
    assert "s3cr3t" not in message


def test_readme_configuration_shows_each_default_or_says_it() -> None:
    """An operator copies README's Configuration block: a value there that is not the default
    says the default in its comment (`access_log: true` read as on by default; it is off)."""
    readme = Path("README.md").read_text(encoding="utf-8")
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    comments = {
        line.split(":", 1)[0].strip(): line.partition("#")[2] for line in block.splitlines()
    }
    defaults = load_settings(None, dev_mode=True)
    differ = []
    for key, shown in yaml.safe_load(block).items():
        if key in ("models", "redis_url"):  # examples: there are no defaults
            continue
        fields = shown.items() if isinstance(shown, dict) else [(key, shown)]
        section = getattr(defaults, key) if isinstance(shown, dict) else defaults
        for name, value in fields:
            default = getattr(section, name)
            given = Path(value).expanduser() if isinstance(default, Path) else value
            if given != default and "(default " not in comments[name]:
                differ.append(name)
    assert differ == []


def test_null_in_an_environment_variable_unsets_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: `routing.max_waiting_per_engine: null` turns shedding off; through the
    environment (LLMAAS_ROUTING__MAX_WAITING_PER_ENGINE=null, the chart's `env`) it was refused
    as not an integer."""
    monkeypatch.setenv("LLMAAS_ROUTING__MAX_WAITING_PER_ENGINE", "null")
    monkeypatch.setenv("LLMAAS_FINE_TUNING__THREADS", "null")
    settings = load_settings(None, dev_mode=True)
    assert settings.routing.max_waiting_per_engine is None
    assert settings.fine_tuning.threads is None


def test_a_wrong_value_from_the_environment_is_said_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLMAAS_PORT=99999 was said as the file's `port`, which held a good one."""
    path = tmp_path / "ok.yaml"
    path.write_text("dev_mode: true\nport: 9000\nupstream:\n  connect_timeout_s: -1\n")
    monkeypatch.setenv("LLMAAS_PORT", "99999")
    monkeypatch.setenv("LLMAAS_UPSTREAM__RESPONSE_TIMEOUT_S", "-5")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert str(refused.value).splitlines() == [
        "",
        "  environment (LLMAAS_PORT): port: Input should be less than or equal to 65535",
        f"  {path}: upstream.connect_timeout_s: Input should be greater than 0",
        "  environment (LLMAAS_UPSTREAM__RESPONSE_TIMEOUT_S): upstream.response_timeout_s: "
        "Input should be greater than 0",
    ]
    monkeypatch.delenv("LLMAAS_UPSTREAM__RESPONSE_TIMEOUT_S")
    monkeypatch.delenv("LLMAAS_PORT")
    path.write_text("dev_mode: true\n")
    monkeypatch.setenv("LLMAAS_MODELS", '[{"name": "m", "engines": ["ftp://x"]}]')
    with pytest.raises(ConfigError, match=r"^environment \(LLMAAS_MODELS\): models\[0\]\.engines"):
        load_settings(path)


def test_an_unknown_variable_is_said_with_the_other_wrong_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It stopped the check alone: the file's wrong field came out only at the next run."""
    path = tmp_path / "gw.yaml"
    path.write_text("dev_mode: true\nport: 99999\n")
    monkeypatch.setenv("LLMAAS_PROT", "9000")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    lines = str(refused.value).splitlines()
    assert lines[0] == ""
    assert lines[1].startswith("  environment: LLMAAS_PROT")
    assert lines[2] == f"  {path}: port: Input should be less than or equal to 65535"
    assert len(lines) == 3


def test_a_check_across_fields_names_the_variables_that_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body limit against the data: URL limit was said as the file's even when
    LLMAAS_MAX_BODY_BYTES had set the body limit (the file had neither)."""
    path = tmp_path / "gw.yaml"
    path.write_text("dev_mode: true\n")
    monkeypatch.setenv("LLMAAS_MAX_BODY_BYTES", "2000")
    with pytest.raises(
        ConfigError, match=r"^environment \(LLMAAS_MAX_BODY_BYTES\): max_body_bytes \(2000\) leaves"
    ):
        load_settings(path)
    path.write_text("dev_mode: true\nrequest_policy:\n  max_data_url_bytes: 900\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert str(refused.value).startswith(f"{path} and environment (LLMAAS_MAX_BODY_BYTES): ")
    monkeypatch.delenv("LLMAAS_MAX_BODY_BYTES")
    path.write_text("dev_mode: true\nmax_body_bytes: 2000\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: max_body_bytes \(2000\)"):
        load_settings(path)
    path.write_text("dev_mode: true\nfiles:\n  enabled: true\n")
    monkeypatch.setenv("LLMAAS_FILES__MAX_BYTES_PER_TENANT", "10")
    with pytest.raises(
        ConfigError, match=r"^environment \(LLMAAS_FILES__MAX_BYTES_PER_TENANT\): files"
    ):
        load_settings(path)
