"""The gateway's config as the chart renders it: the gateway's own Settings accept it (with the
secrets the Deployment gives it), it names every engine's headless Service, and no secret ever
lands in a ConfigMap."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic import BaseModel

from gateway.settings import Settings
from gateway.settings_load import NOT_SETTINGS, load_settings, unknown_variables
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    Obj,
    Rendered,
    Renders,
    arg_after,
    container,
    env_of,
    pod_labels,
    render_values,
    render_values_as,
    selects,
)

# Settings fields the chart sets itself (or passes as secrets), not through gateway.config.
MANAGED = {
    "host",
    "port",
    "models",
    "redis_url",
    "redis_password",
    "admin_token",
    "key_pepper",
    "metrics_token",
    "dev_mode",
    "metering.spill_dir",
    "auth.jwt.public_key_file",
    "auth.jwt.jwks_file",
    "auth.jwt.hmac_secret",
    "files.dir",
    "files.enabled",
    "fine_tuning.base_models",
    "fine_tuning.max_lora_rank",
}
_VAR = re.compile(r"\$\((\w+)\)")
OUTSIDE = "dns://vllm.other-team.svc.cluster.local:8000"


def _secret_stand_ins(gateway: Obj) -> dict[str, str]:
    """The gateway container's environment as the kubelet would build it, with a stand-in for
    every value that comes from a Secret, and $(VAR) references expanded."""
    env: dict[str, str] = {}
    for item in container(gateway)["env"]:
        if "valueFrom" in item:
            env[item["name"]] = f"{item['name'].lower()}-stand-in-value"
        else:
            env[item["name"]] = _VAR.sub(lambda m: env[m.group(1)], item["value"])
    return env


def _load(
    rendered: Rendered,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets: dict[str, str] | None = None,
) -> Settings:
    """The rendered config file loaded by the gateway's own loader, as `llmaas serve` would;
    `secrets`: real values for some of the stand-ins (by environment variable)."""
    path = tmp_path / "config.yaml"
    path.write_text(rendered.config_text())
    for name in [n for n in os.environ if n.startswith("LLMAAS_")]:
        monkeypatch.delenv(name)
    for name, value in {**_secret_stand_ins(rendered.gateway()), **(secrets or {})}.items():
        monkeypatch.setenv(name, value)
    return load_settings(path)


@pytest.fixture
def settings(rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return _load(rendered, tmp_path, monkeypatch)


def test_rendered_config_loads_through_gateway_settings(
    rendered: Rendered, settings: Settings
) -> None:
    gateway = rendered.gateway()
    (port,) = container(gateway)["ports"]
    assert (settings.host, settings.port) == ("0.0.0.0", port["containerPort"])
    assert settings.dev_mode is False
    assert settings.admin_token == "llmaas_admin_token-stand-in-value"
    assert settings.key_pepper == "llmaas_key_pepper-stand-in-value"
    assert settings.redis_url is not None
    assert str(settings.metering.spill_dir) == "/var/lib/llmaas/spill"
    assert settings.models, "the gateway would serve no model"


def test_every_engine_is_named_by_its_headless_service(
    rendered: Rendered, settings: Settings
) -> None:
    routes = {m.name: m.engines for m in settings.models}
    for engine in rendered.engines():
        c = container(engine)
        flag = "--model" if c.get("command") == ["llmaas", "sim"] else "--served-model-name"
        served = arg_after(c["args"], flag)
        (service,) = [
            s
            for s in rendered.kind("Service")
            if selects(s["spec"]["selector"], pod_labels(engine))
        ]
        assert service["spec"]["clusterIP"] == "None"
        (port,) = service["spec"]["ports"]
        fqdn = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert f"dns://{fqdn}:{port['port']}" in routes[served]
    headless = {
        s["metadata"]["name"]
        for s in rendered.kind("Service")
        if s["spec"].get("clusterIP") == "None"
    }
    for entries in routes.values():
        for entry in entries:
            if entry.startswith("dns://"):
                assert entry.removeprefix("dns://").split(".")[0] in headless, entry


def test_models_pool_engines_and_adapters(renders: Renders) -> None:
    config = yaml.safe_load(renders["multi-engine-lora"].config_text())
    routes = {m["name"]: [e.split(".")[0] for e in m["engines"]] for m in config["models"]}
    h100, l40s = "dns://demo-llmaas-engine-llama-h100", "dns://demo-llmaas-engine-llama-l40s"
    assert routes == {
        "llama-3.1-8b-instruct": [h100, l40s],
        "sql-lora": [h100, l40s],
        "support-lora": [h100],
        "e5-mistral-7b-instruct": ["dns://demo-llmaas-engine-embed"],
        "legacy-model": ["http://vllm"],
    }
    assert config["routing"]["strategy"] == "least_loaded"


def test_a_release_without_engines_routes_to_outside_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"engines": [], "gateway": {"extraModels": [{"name": "m", "engines": [OUTSIDE]}]}}
    rendered = render_values_as(values)
    assert rendered.engines() == []
    settings = _load(rendered, tmp_path, monkeypatch)
    assert [(m.name, m.engines) for m in settings.models] == [("m", [OUTSIDE])]


def test_environment_variables_name_real_settings(rendered: Rendered) -> None:
    """Each LLMAAS_* variable is a setting, or one the tools beside the gateway read (the CLI's
    LLMAAS_URL), which the gateway knows not to warn about."""
    names = [
        n for n in env_of(rendered.gateway()) if n.startswith("LLMAAS_") and n not in NOT_SETTINGS
    ]
    assert {"LLMAAS_ADMIN_TOKEN", "LLMAAS_KEY_PEPPER", "LLMAAS_REDIS_URL"} <= set(names)
    for name in names:
        model: type[BaseModel] = Settings
        *parents, leaf = name.removeprefix("LLMAAS_").lower().split("__")
        for part in parents:
            annotation = model.model_fields[part].annotation
            assert isinstance(annotation, type), name
            assert issubclass(annotation, BaseModel), name
            model = annotation
        assert leaf in model.model_fields, f"{name} is not a gateway setting: it would be ignored"


def test_secrets_never_appear_in_a_configmap(rendered: Rendered) -> None:
    secrets = [v for s in rendered.kind("Secret") for v in _secret_values(s)]
    published = "\n".join(
        str(v) for c in rendered.kind("ConfigMap") for v in c.get("data", {}).values()
    )
    for value in secrets:
        assert value not in published
    config = yaml.safe_load(rendered.config_text())
    for field in ("admin_token", "key_pepper", "metrics_token", "redis_url"):
        assert field not in config
    assert "hmac_secret" not in config.get("auth", {}).get("jwt", {})


def test_inline_secrets_reach_secrets_only(renders: Renders) -> None:
    rendered = renders["inline-secrets"]
    secrets = {v for s in rendered.kind("Secret") for v in _secret_values(s)}
    given = [
        "admin-token-0123456789abcdef",
        "key-pepper-0123456789abcdef",
        "metrics-token-0123456789abcdef",
        "jwt-hmac-secret-0123456789abcdef",
        "redis-password-0123456789abcdef",
        "hf_inline0123456789abcdef",
        "inline-jwks-kid-0123456789",
    ]
    published = json.dumps([c["data"] for c in rendered.kind("ConfigMap")])
    published += json.dumps([o for o in rendered.objects if o["kind"] != "Secret"])
    for value in given:
        assert any(value in s for s in secrets), value
        assert value not in published, value


def test_existing_secrets_are_referenced_not_made(renders: Renders) -> None:
    rendered = renders["existing-secrets"]
    refs = {
        name: item["valueFrom"]["secretKeyRef"]
        for name, item in env_of(rendered.gateway()).items()
        if "valueFrom" in item
    }
    assert refs["LLMAAS_ADMIN_TOKEN"] == {"name": "llmaas-admin", "key": "token"}
    assert refs["LLMAAS_KEY_PEPPER"] == {"name": "llmaas-pepper", "key": "pepper"}
    assert refs["LLMAAS_METRICS_TOKEN"] == {"name": "llmaas-metrics", "key": "token"}
    assert refs["LLMAAS_REDIS_PASSWORD"] == {"name": "llmaas-redis", "key": "password"}
    assert refs["LLMAAS_AUTH__JWT__HMAC_SECRET"] == {"name": "llmaas-jwt", "key": "hmac"}
    (engine,) = rendered.engines()
    assert env_of(engine)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-token",
        "key": "token",
    }
    assert rendered.kind("Secret") == [], "every secret exists already"


def test_jwt_key_files_are_mounted_where_the_config_points(rendered: Rendered) -> None:
    config = yaml.safe_load(rendered.config_text())
    jwt: dict[str, Any] = config.get("auth", {}).get("jwt", {})
    files = [jwt[k] for k in ("public_key_file", "jwks_file") if k in jwt]
    expected = {"existing-secrets": 1, "inline-secrets": 2}.get(rendered.case, 0)
    assert len(files) == expected
    gateway = rendered.gateway()
    mounts = {m["name"]: m["mountPath"] for m in container(gateway)["volumeMounts"]}
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    for path in files:
        directory, filename = path.rsplit("/", 1)
        (name,) = [n for n, p in mounts.items() if p == directory]
        items = [i for src in volumes[name]["projected"]["sources"] for i in src["secret"]["items"]]
        assert filename in {i["path"] for i in items}


def test_external_redis_password_comes_from_its_secret_not_the_url(renders: Renders) -> None:
    rendered = renders["external-redis"]
    env = env_of(rendered.gateway())
    assert env["LLMAAS_REDIS_URL"]["value"] == "rediss://redis.example.internal:6380/2"
    ref = env["LLMAAS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "managed-redis", "key": "password"}
    assert rendered.kind("StatefulSet") == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rediss://default@redis.example:6380/2", "rediss://default@redis.example:6380/2"),
        (
            "rediss://redis.example:6380/0?ssl_ca_certs=/etc/llmaas/ca/ca.crt",
            "rediss://redis.example:6380/0?ssl_ca_certs=/etc/llmaas/ca/ca.crt",
        ),
    ],
)
def test_external_redis_url_keeps_its_user_name_and_never_a_password(
    url: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password is LLMAAS_REDIS_PASSWORD, any characters; an ACL user stays in the URL."""
    password = {"value": "p@ss/w#rd%?x"}
    rendered = render_values_as(
        {"redis": {"enabled": False, "external": {"url": url, "password": password}}}
    )
    env = env_of(rendered.gateway())
    assert env["LLMAAS_REDIS_URL"]["value"] == expected
    ref = env["LLMAAS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = rendered.get("Secret", ref["name"])
    given = base64.b64decode(secret["data"][ref["key"]]).decode()
    assert given == password["value"]
    assert _load(rendered, tmp_path, monkeypatch).redis_url == expected
    monkeypatch.setenv("LLMAAS_REDIS_PASSWORD", given)  # the real value, not a stand-in
    assert load_settings(tmp_path / "config.yaml").redis_password == given


@pytest.mark.parametrize(
    "external",
    [
        {"url": "rediss://default:S3cr3t-pw@redis.example:6380/0"},
        {"url": "redis://:S3cr3t-pw@redis.example:6379/0"},
        {"url": "redis://app:S3cr3t-pw@redis.example:6379/0", "password": {"existingSecret": "r"}},
    ],
)
def test_a_password_in_the_external_redis_url_is_refused_never_shown(external: Obj) -> None:
    """LLMAAS_REDIS_URL is a plain env value: a password in it would be readable by anyone who
    can read the Deployments. Refused, pointing to redis.external.password, without echoing it."""
    with pytest.raises(
        helm.HelmRenderError, match=r"redis\.external\.url: has a password in it"
    ) as e:
        render_values({"redis": {"enabled": False, "external": external}})
    assert "redis.external.password" in str(e.value)
    assert "S3cr3t-pw" not in str(e.value)


def test_an_external_redis_url_with_a_user_name_only_is_kept_as_given() -> None:
    url = "rediss://default@redis.example:6380/0"
    rendered = render_values_as({"redis": {"enabled": False, "external": {"url": url}}})
    env = env_of(rendered.gateway())
    assert env["LLMAAS_REDIS_URL"]["value"] == url
    assert "LLMAAS_REDIS_PASSWORD" not in env


def test_the_builtin_redis_url_has_no_password(rendered: Rendered) -> None:
    env = env_of(rendered.gateway())
    url = env["LLMAAS_REDIS_URL"]["value"]
    assert "@" not in url
    assert "$(" not in url
    if rendered.values["redis"]["enabled"]:
        assert url == f"redis://demo-llmaas-redis.{NAMESPACE}.svc.cluster.local:6379/0"
        assert "valueFrom" in env["LLMAAS_REDIS_PASSWORD"]


def test_schema_of_gateway_config_follows_settings() -> None:
    """gateway.config takes exactly the Settings fields the chart does not manage itself."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["gateway"]["properties"]["config"]
    assert _schema_fields(config, schema) == _settings_fields(Settings) - MANAGED


def test_the_charts_list_of_variables_follows_settings() -> None:
    """files/environment.yaml, which gateway.env and fineTuning.trainer.env are checked against
    at render, names exactly the LLMAAS_* variables the gateway reads: a setting or section of
    Settings, or one the tools beside it read. The gateway takes each, and refuses the rest."""
    listed = yaml.safe_load((CHART / "files" / "environment.yaml").read_text())
    expected = {"settings": sorted(_variables(Settings)), "notSettings": sorted(NOT_SETTINGS)}
    assert listed == expected, "write this to helm/llmaas/files/environment.yaml:\n" + yaml.dump(
        expected, sort_keys=False
    )
    for name in [*listed["settings"], *listed["notSettings"]]:
        assert unknown_variables({name: "1"}) == [], name
    assert unknown_variables({"LLMAAS_UPSTREAM_TIMEOUT": "8"}) != []


def _variables(model: type[BaseModel], prefix: str = "LLMAAS_") -> set[str]:
    """Each field's variable, sections' too (a section is given whole as JSON)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        variable = prefix + name.upper()
        names.add(variable)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _variables(annotation, f"{variable}__")
    return names


def _secret_values(secret: Obj) -> list[str]:
    data = [base64.b64decode(v).decode() for v in secret.get("data", {}).values()]
    return data + [str(v) for v in secret.get("stringData", {}).values()]


def _settings_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    fields: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields |= _settings_fields(annotation, f"{prefix}{name}.")
        else:
            fields.add(prefix + name)
    return fields


def _schema_fields(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    fields: set[str] = set()
    assert node.get("additionalProperties") is False, prefix or "gateway.config"
    for name, prop in node["properties"].items():
        sub = root["$defs"][prop["$ref"].rsplit("/", 1)[1]] if "$ref" in prop else prop
        if sub.get("type") == "object" and "properties" in sub:
            fields |= _schema_fields(sub, root, f"{prefix}{name}.")
        else:
            fields.add(prefix + name)
    return fields


def test_an_ipv6_only_cluster_has_the_gateway_and_engines_listen_on_ipv6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known since 2026-12-05: the gateway and the engines listened on 0.0.0.0 alone, so on an
    IPv6-only cluster the probes and the Services reached their pods at an address nobody
    listened on. `listenAddress: "::"` (the default stays 0.0.0.0); nothing else is taken."""
    rendered = render_values_as({"listenAddress": "::"})
    assert _load(rendered, tmp_path, monkeypatch).host == "::"
    # The image sets LLMAAS_HOST=0.0.0.0, which beats the config file: the container's own
    # environment, which beats the image's, says it again.
    assert "LLMAAS_HOST=0.0.0.0" in (CHART.parents[1] / "Dockerfile").read_text()
    assert env_of(rendered.gateway())["LLMAAS_HOST"]["value"] == "::"
    assert rendered.engines()
    for engine in rendered.engines():
        assert arg_after(container(engine)["args"], "--host") == "::"
    with pytest.raises(helm.HelmValuesError, match="listenAddress"):
        render_values({"listenAddress": "localhost"})


@pytest.mark.parametrize(
    ("address", "url"), [("0.0.0.0", "http://127.0.0.1:8080"), ("::", "http://[::1]:8080")]
)
def test_the_cli_in_the_gateway_container_reaches_the_gateway_it_runs_beside(
    address: str, url: str
) -> None:
    """Found by review 2026-12-06: with `listenAddress: "::"` the first key's documented step
    (`kubectl exec deploy/<gateway> -- llmaas keys create`, deploy.md and NOTES.txt) failed:
    the CLI's default, http://127.0.0.1:8080, is an address an IPv6-only listener refuses. The
    container's LLMAAS_URL is its own loopback in the family it listens in, at its port."""
    gateway = render_values_as({"listenAddress": address}).gateway()
    assert env_of(gateway)["LLMAAS_URL"]["value"] == url
    [port] = container(gateway)["ports"]
    assert url.endswith(f":{port['containerPort']}")
