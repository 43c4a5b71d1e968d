"""Bad values are refused before anything reaches a cluster, by values.schema.json (for
`helm install`, `template` and `lint` alike), with a message that names the offending field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway.settings import RequestPolicySettings, Settings
from gateway.settings_load import ConfigError, load_settings
from tests.helm.chart import CHART, NAMESPACE, env_of, render_values, render_values_as
from tests.helm.test_chart_config import _load

DEPLOY_DOC = CHART.parents[1] / "docs" / "deploy.md"
# Maps whose keys are Kubernetes' or the gateway's own, documented where they come from.
_PASSED_THROUGH = {
    "config",
    "resources",
    "probes",
    "strategy",
    "podSecurityContext",
    "securityContext",
    "affinity",
}

ENGINE = {"name": "llama", "model": "meta-llama/Llama-3.1-8B-Instruct"}
# The gateway's defaults for the body and data: URL limits, and the room it wants between them.
_BODY = Settings.model_fields["max_body_bytes"].default
_IMAGE = RequestPolicySettings.model_fields["max_data_url_bytes"].default
_AROUND = 16 * 1024

BAD_VALUES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "typo'd key": ({"gateway": {"replica": 3}}, ["at '/gateway'", "'replica' not allowed"]),
    "typo'd engine key": (
        {"engines": [{**ENGINE, "tensorParalelSize": 2}]},
        ["at '/engines/0'", "'tensorParalelSize' not allowed"],
    ),
    "typo'd gateway setting": (
        {"gateway": {"config": {"limits": {"failure_mod": "open"}}}},
        ["at '/gateway/config/limits'", "'failure_mod' not allowed"],
    ),
    "negative gateway replicas": (
        {"gateway": {"replicas": -1}},
        ["at '/gateway/replicas'", "minimum: got -1"],
    ),
    "negative engine replicas": (
        {"engines": [{**ENGINE, "replicas": -2}]},
        ["at '/engines/0/replicas'", "minimum: got -2"],
    ),
    "missing model": ({"engines": [{"name": "llama"}]}, ["at '/engines/0'", "'model'"]),
    "wrong type": (
        {"engineDefaults": {"tensorParallelSize": "4"}},
        ["at '/engineDefaults/tensorParallelSize'", "got string, want integer"],
    ),
    "engine name not a DNS label": (
        {"engines": [{**ENGINE, "name": "Llama_8B"}]},
        ["at '/engines/0/name'", "does not match pattern"],
    ),
    "GPU memory above 100%": (
        {"engines": [{**ENGINE, "gpuMemoryUtilization": 1.5}]},
        ["at '/engines/0/gpuMemoryUtilization'", "maximum"],
    ),
    "unknown routing strategy": (
        {"gateway": {"config": {"routing": {"strategy": "random"}}}},
        ["at '/gateway/config/routing/strategy'", "must be one of 'round_robin'"],
    ),
    "short admin token": (
        {"gateway": {"secrets": {"adminToken": {"value": "hunter2"}}}},
        ["at '/gateway/secrets/adminToken/value'"],
    ),
    "external Redis without a URL": (
        {"redis": {"enabled": False}},
        ["at '/redis/external/url'"],
    ),
    "a size that is not a Kubernetes quantity": (
        {"engineDefaults": {"shmSize": "8 GB"}},
        ["at '/engineDefaults/shmSize'", "does not match pattern"],
    ),
    "a resource that is not a Kubernetes quantity": (
        {"redis": {"resources": {"limits": {"memory": "2 GiB"}}}},
        ["at '/redis/resources/limits/memory'", "does not match pattern"],
    ),
    "KEDA's cooldownPeriod, which minReplicas >= 1 makes a no-op": (
        {"engines": [{**ENGINE, "autoscaling": {"cooldownPeriod": 300}}]},
        ["at '/engines/0/autoscaling'", "'cooldownPeriod' not allowed"],
    ),
}

RWX = {"accessModes": ["ReadWriteMany"]}
LONG = "x" * 40  # fullnameOverride at its longest: engine names keep 15 characters
JWT_KEY = {"jwt": {"hmacSecret": {"value": "hmac-secret-0123456789abcdef0123"}}}  # 32 bytes
ISSUED = {"issuer": "https://idp/", "audience": "llmaas"}
BASE = {"enabled": True, "baseModels": [{"name": ENGINE["model"], "path": "/models/llama"}]}

# Values the schema lets through but that would not work: refused when rendering (`fail`).
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "gateway PDB with both bounds": (
        {"gateway": {"podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": 1}}},
        "gateway.podDisruptionBudget: minAvailable and maxUnavailable are both set",
    ),
    "gateway PDB with neither bound": (
        {"gateway": {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": None}}},
        "gateway.podDisruptionBudget: neither minAvailable nor maxUnavailable is set",
    ),
    "gateway HPA minimum above its maximum": (
        {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}},
        r"gateway.autoscaling: minReplicas \(5\) is above maxReplicas \(3\)",
    ),
    "engine KEDA minimum above its maximum": (
        {
            "engines": [
                {**ENGINE, "modelCache": RWX, "autoscaling": {"enabled": True, "minReplicas": 5}}
            ]
        },
        r"engines\[llama\].autoscaling: minReplicas \(5\) is above maxReplicas \(4\)",
    ),
    "ReadWriteOnce cache, two replicas": (
        {"engines": [{**ENGINE, "replicas": 2}]},
        r"engines\[llama\].modelCache: a ReadWriteOnce claim, .*\(replicas: 2\)",
    ),
    "ReadWriteOnce cache, autoscaling": (
        {"engines": [{**ENGINE, "autoscaling": {"enabled": True, "maxReplicas": 6}}]},
        r"ReadWriteOnce claim, .*\(autoscaling.maxReplicas: 6\): .*Multi-Attach",
    ),
    # Found 2026-12-07: Prometheus shut out of the engines by their NetworkPolicy (engine
    # alerts, dashboard panels and KEDA without data, and nothing said so).
    "engine ServiceMonitor without networkPolicy.metricsFrom": (
        {"monitoring": {"serviceMonitors": {"enabled": True}}},
        r"monitoring.serviceMonitors.enabled: Prometheus would scrape the engines' /metrics, "
        r"but .*networkPolicy.metricsFrom is empty",
    ),
    "KEDA without networkPolicy.metricsFrom": (
        {"engines": [{**ENGINE, "modelCache": RWX, "autoscaling": {"enabled": True}}]},
        r"engines\[llama\].autoscaling.enabled: .*Name your Prometheus pods in "
        r"networkPolicy.metricsFrom",
    ),
    "ReadWriteOnce cache, a surge pod": (
        {
            "engines": [
                {**ENGINE, "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}
            ]
        },
        r"ReadWriteOnce claim, .*\(strategy.rollingUpdate.maxSurge: 1\)",
    ),
    "a longer drain in gateway.env than the pod's grace period": (
        {"gateway": {"env": [{"name": "LLMAAS_SHUTDOWN_GRACE_S", "value": "600"}]}},
        r"gateway.env: LLMAAS_SHUTDOWN_GRACE_S would override gateway.config.shutdown_grace_s, "
        r"from which the chart derives the pods' terminationGracePeriodSeconds",
    ),
    "the flush timeout in gateway.env": (
        {"gateway": {"env": [{"name": "llmaas_metering__flush_timeout_s", "value": "60"}]}},
        r"set gateway.config.metering.flush_timeout_s instead",
    ),
    "the port the probes reach, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_PORT", "value": "9000"}]}},
        r"gateway.env: LLMAAS_PORT would override a setting the chart sets from the chart \(8080",
    ),
    "the CLI's address in the gateway's container, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_URL", "value": "http://[::1]:8080"}]}},
        r"gateway.env: LLMAAS_URL would override a setting the chart sets from listenAddress",
    ),
    "the DNS refresh the engines' preStop sleep is checked against, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_ROUTING__DNS_REFRESH_S", "value": "60"}]}},
        r"gateway.env: LLMAAS_ROUTING__DNS_REFRESH_S would override a setting the chart sets "
        r"from gateway.config.routing.dns_refresh_s",
    ),
    "the LoRA rank the engines load, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_FINE_TUNING__MAX_LORA_RANK", "value": "64"}]}},
        r"LLMAAS_FINE_TUNING__MAX_LORA_RANK would override a setting the chart sets from "
        r"fineTuning.maxLoraRank",
    ),
    "a misspelt setting in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_UPSTREAM_TIMEOUT", "value": "8"}]}},
        r"gateway.env: LLMAAS_UPSTREAM_TIMEOUT is not a setting: the gateway would refuse to "
        r"start. A setting's variable is LLMAAS_ and its path in gateway.config in capitals",
    ),
    "a section's setting spelt with one underscore, in gateway.env": (
        {"gateway": {"env": [{"name": "llmaas_upstream_max_connections", "value": "8"}]}},
        r"gateway.env: llmaas_upstream_max_connections is not a setting \(did you mean "
        r"LLMAAS_UPSTREAM__MAX_CONNECTIONS\?\)",
    ),
    "a base model by name, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_FINE_TUNING__BASE_MODELS__M", "value": "/m"}]}},
        r"LLMAAS_FINE_TUNING__BASE_MODELS__M would override a setting the chart sets from "
        r"fineTuning.baseModels",
    ),
    "a config sub-section holding fields the chart sets, in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_AUTH__JWT", "value": '{"public_key_file": "/x"}'}]}},
        r"gateway.env: LLMAAS_AUTH__JWT would replace a whole section of the config",
    ),
    "a whole config section in gateway.env": (
        {"gateway": {"env": [{"name": "LLMAAS_FILES", "value": '{"enabled": true}'}]}},
        r"gateway.env: LLMAAS_FILES would replace a whole section of the config",
    ),
    "two of the gateway Secret's values under one key": (
        {
            "gateway": {
                "jwt": {"hmacSecret": {"value": "h" * 40, "key": "admin-token"}},
                "config": {"auth": {"jwt": {**ISSUED, "algorithms": ["HS256"]}}},
            }
        },
        r'gateway.jwt.hmacSecret.key and gateway.secrets.adminToken.key are both "admin-token"',
    ),
    "a JWT public key and a JWKS under one key": (
        {
            "gateway": {
                "jwt": {
                    "publicKey": {"value": "pem", "key": "k"},
                    "jwks": {"value": "{}", "key": "k"},
                },
                "config": {"auth": {"jwt": ISSUED}},
            }
        },
        r'gateway.jwt.jwks.key and gateway.jwt.publicKey.key are both "k"',
    ),
    "an autoscaler without a CPU request": (
        {
            "gateway": {
                "autoscaling": {"enabled": True},
                "resources": {"requests": {"cpu": None}},
            }
        },
        r"gateway.autoscaling: targetCPUUtilizationPercentage is a share of "
        r"gateway.resources.requests.cpu, which is not set",
    ),
    "fewer GPUs than tensor-parallel shards": (
        {"engines": [{**ENGINE, "tensorParallelSize": 4, "gpu": {"count": 2}}]},
        r"engines\[llama\].gpu.count: 2 GPU\(s\) for 4 workers \(tensor parallel 4 x "
        r"pipeline parallel 1 x prefill context parallel 1 x data parallel ranks here 1",
    ),
    "fewer GPUs than pipeline-parallel shards": (
        {"engines": [{**ENGINE, "gpu": {"count": 1}, "extraArgs": ["-pp", "2"]}]},
        r"engines\[llama\].gpu.count: 1 GPU\(s\) for 2 workers",
    ),
    "fewer GPUs than tensor x pipeline shards, -pp=N": (
        {
            "engines": [
                {**ENGINE, "tensorParallelSize": 2, "gpu": {"count": 2}, "extraArgs": ["-pp=2"]}
            ]
        },
        r"gpu.count: 2 GPU\(s\) for 4 workers \(tensor parallel 2 x pipeline parallel 2 x ",
    ),
    "fewer GPUs than the -tp of extraArgs": (
        {"engines": [{**ENGINE, "gpu": {"count": 1}, "extraArgs": ["-tp", "2"]}]},
        r"gpu.count: 1 GPU\(s\) for 2 workers \(tensor parallel 2 x pipeline parallel 1 x ",
    ),
    "fewer GPUs than data-parallel ranks": (
        {"engines": [{**ENGINE, "gpu": {"count": 1}, "extraArgs": ["--data-parallel-size", "2"]}]},
        r"gpu.count: 1 GPU\(s\) for 2 workers \(.* x data parallel ranks here 2, from "
        r"tensorParallelSize",
    ),
    "engines stopped before the gateway resolves them away": (
        {"engines": [ENGINE], "gateway": {"config": {"routing": {"dns_refresh_s": 30}}}},
        r"engines\[llama\].preStopSleepSeconds \(15\) is below "
        r"gateway.config.routing.dns_refresh_s \(30\)",
    ),
    "an engine with no preStop sleep": (
        {"engines": [{**ENGINE, "preStopSleepSeconds": 0}]},
        r"engines\[llama\].preStopSleepSeconds \(0\) is below .*dns_refresh_s \(10\)",
    ),
    "an external Redis URL with its password in it": (
        {"redis": {"enabled": False, "external": {"url": "rediss://default:S3cr3t@redis:6380/0"}}},
        r"redis.external.url: has a password in it, .* give it as redis.external.password",
    ),
    "gateway podLabels that would change a selector label": (
        {"gateway": {"podLabels": {"team": "ml", "app.kubernetes.io/name": "my-gateway"}}},
        r'gateway.podLabels: "app.kubernetes.io/name" is a selector label of the pods',
    ),
    "engine podLabels that would change the engine's selector label": (
        {"engines": [{**ENGINE, "podLabels": {"llmaas.io/engine": "other"}}]},
        r'engines\[llama\].podLabels: "llmaas.io/engine" is a selector label of the pods',
    ),
    "engineDefaults podLabels that would change a selector label": (
        {"engines": [ENGINE], "engineDefaults": {"podLabels": {"app.kubernetes.io/instance": "x"}}},
        r'engines\[llama\].podLabels: "app.kubernetes.io/instance" is a selector label',
    ),
    "trainer podLabels that would change a selector label": (
        {
            "engines": [ENGINE],
            "fineTuning": {**BASE, "trainer": {"podLabels": {"app.kubernetes.io/component": "x"}}},
        },
        r'fineTuning.trainer.podLabels: "app.kubernetes.io/component" is a selector label',
    ),
    "an external Redis with the chart's own still on": (
        {"redis": {"external": {"url": "rediss://redis.example:6380/0"}}},
        r"redis.external is set but redis.enabled is true: the gateway would use the chart's own",
    ),
    "a gateway grace period shorter than its drain": (
        {"gateway": {"terminationGracePeriodSeconds": 30}},
        r"gateway.terminationGracePeriodSeconds \(30\) is shorter than a pod's drain \(145: ",
    ),
    "an engine grace period that leaves vLLM no drain": (
        {"engines": [{**ENGINE, "terminationGracePeriodSeconds": 25}]},
        r"engines\[llama\].terminationGracePeriodSeconds \(25\) leaves vLLM no time to finish",
    ),
    "LoRA adapters listed with LoRA off": (
        {"engines": [{**ENGINE, "lora": {"modules": [{"name": "sql-lora", "path": "/m/sql"}]}}]},
        r"engines\[llama\].lora.modules: 1 adapter\(s\) listed but lora.enabled is false",
    ),
    "engine names the same once cut to 63 characters": (
        {
            "fullnameOverride": LONG,
            "engines": [
                {**ENGINE, "name": "llama-3-1-8b-instruct-a"},
                {**ENGINE, "name": "llama-3-1-8b-instruct-b"},
            ],
        },
        f'engines: "llama-3-1-8b-instruct-a" and "llama-3-1-8b-instruct-b" would both name '
        f'their Deployment, Service and claim "{LONG}-engine-llama-3-1-8b-in"',
    ),
    "an extra model named like an engine's": (
        {
            "engines": [ENGINE],
            "gateway": {"extraModels": [{"name": ENGINE["model"], "engines": ["http://x"]}]},
        },
        f'gateway.extraModels: the name "{ENGINE["model"]}" is taken already',
    ),
    "an extra model named like an engine's adapter": (
        {
            "engines": [
                {**ENGINE, "lora": {"enabled": True, "modules": [{"name": "sql", "path": "/a"}]}}
            ],
            "gateway": {"extraModels": [{"name": "sql", "engines": ["http://x"]}]},
        },
        'gateway.extraModels: the name "sql" is taken already',
    ),
    "a JWT key without issuer and audience": (
        {"gateway": JWT_KEY},
        r"gateway.config.auth.jwt.issuer and gateway.config.auth.jwt.audience are both "
        r"required when JWTs are on \(gateway.jwt.hmacSecret set\)",
    ),
    "a JWKS URL without an audience": (
        {
            "gateway": {
                "jwt": {"jwks": {"value": "{}"}},
                "config": {
                    "auth": {"jwt": {"jwks_url": "https://idp/jwks", "issuer": "https://idp/"}}
                },
            }
        },
        r"required when JWTs are on \(gateway.jwt.jwks, gateway.config.auth.jwt.jwks_url set\)",
    ),
    "an HMAC secret with the default algorithms (RS256, ES256)": (
        {"gateway": {**JWT_KEY, "config": {"auth": {"jwt": {"issuer": "i", "audience": "a"}}}}},
        r"gateway.config.auth.jwt.algorithms \[RS256 ES256\]: no key for any of them "
        r"\(gateway.jwt.hmacSecret set\)",
    ),
    "an inline HMAC secret shorter than HS256 needs": (
        {
            "gateway": {
                "jwt": {"hmacSecret": {"value": "my-idp-shared-secret"}},
                "config": {"auth": {"jwt": {**ISSUED, "algorithms": ["HS256"]}}},
            }
        },
        r"gateway.jwt.hmacSecret.value: 20 bytes, but HS256 needs at least 32",
    ),
    "Redis without a memory limit": (
        {"redis": {"resources": {"limits": None}}},
        r"redis.resources.limits.memory: needed",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_values_that_would_not_work_are_refused_at_render(case: str) -> None:
    values, message = REFUSED[case]
    with pytest.raises(helm.HelmRenderError, match=message):  # (helm lint only logs a fail)
        render_values(values)


def test_each_value_a_refusal_of_env_points_to_is_a_value_of_the_chart() -> None:
    """Found by review 2026-12-07: LLMAAS_FINE_TUNING__MAX_LORA_RANK in gateway.env was refused
    pointing to fineTuning.loraRank, which does not exist (fineTuning.maxLoraRank). Every value
    _validate.tpl names for a variable the chart sets is one of values.schema.json."""
    template = (CHART / "templates" / "_validate.tpl").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    named: dict[str, str] = {}
    for line in re.findall(r"^\{\{- \$\w+ := (?:merge \()?dict .*$", template, re.MULTILINE):
        named |= dict(re.findall(r'"([A-Z_]+)" "([^"]*)"', line))
    assert named["LLMAAS_FINE_TUNING__MAX_LORA_RANK"].startswith("fineTuning.maxLoraRank ")
    assert {"LLMAAS_REDIS_URL", "HF_HOME", "LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S"} <= set(named)
    for variable, where in named.items():
        if not where.startswith("the chart"):
            for path in where.split(" (")[0].split(" and "):
                assert _in_schema(schema, path), f"{variable}: {path} is no value of the chart"


def _in_schema(schema: dict[str, Any], path: str) -> bool:
    node = schema
    for part in path.split("."):
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if part not in node.get("properties", {}):
            return False
        node = node["properties"][part]
    return True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_body_bytes": _IMAGE + _AROUND - 1}, f"max_body_bytes \\({_IMAGE + _AROUND - 1}\\)"),
        (
            {"request_policy": {"max_data_url_bytes": _BODY - _AROUND + 1}},
            f"max_data_url_bytes \\({_BODY - _AROUND + 1}\\)",
        ),
    ],
    ids=["body", "image"],
)
def test_a_body_limit_without_room_for_an_image_is_refused(
    values: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review 2026-12-07: gateway.config.max_body_bytes 4 MiB (the gateway's 8 MiB
    data: URL limit left as it is) rendered, and every gateway refused to start. The gateway's
    rule, with its defaults for the one not given: a byte short is refused at render naming
    both; just enough renders, the gateway starts with it and refuses it a byte shorter."""
    with pytest.raises(
        helm.HelmRenderError,
        match=rf"gateway.config.max_body_bytes \(\d+\) leaves less than {_AROUND} bytes above "
        r"gateway.config.request_policy.max_data_url_bytes \(\d+\) .*the gateway refuses to start",
    ) as refused:
        render_values({"gateway": {"config": values}})
    assert re.search(message, str(refused.value))
    edge = {"max_body_bytes": _IMAGE + _AROUND}
    settings = _load(render_values_as({"gateway": {"config": edge}}), tmp_path, monkeypatch)
    assert settings.max_body_bytes == _IMAGE + _AROUND
    monkeypatch.setenv("LLMAAS_MAX_BODY_BYTES", str(_IMAGE + _AROUND - 1))
    with pytest.raises(ConfigError, match=f"leaves less than {_AROUND} bytes"):
        load_settings(tmp_path / "config.yaml")


@pytest.mark.parametrize(
    ("env", "config", "names"),
    [
        (
            {"LLMAAS_MAX_BODY_BYTES": str(_IMAGE + _AROUND - 1)},
            {},
            ("gateway.env LLMAAS_MAX_BODY_BYTES", "gateway.config.request_policy"),
        ),
        (
            {"llmaas_request_policy__max_data_url_bytes": str(_BODY - _AROUND + 1)},
            {"max_body_bytes": _BODY},
            ("gateway.config.max_body_bytes", "gateway.env LLMAAS_REQUEST_POLICY__MAX_DATA"),
        ),
    ],
    ids=["body", "image"],
)
def test_a_body_limit_set_in_the_environment_is_checked_too(
    env: dict[str, str],
    config: dict[str, Any],
    names: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Left at the last stop: the chart checked the body limit against the image limit in
    gateway.config only, and gateway.env wins over it in the gateway: a body limit too small
    set there rendered, and every gateway refused to start. Refused, naming where each came
    from; the environment's value just enough renders and the gateway starts with it."""
    entries = [{"name": name, "value": value} for name, value in env.items()]
    with pytest.raises(helm.HelmRenderError, match="the gateway refuses to start") as refused:
        render_values({"gateway": {"config": config, "env": entries}})
    for name in names:
        assert name in str(refused.value)
    fits = {"LLMAAS_MAX_BODY_BYTES": str(_IMAGE + _AROUND)}
    rendered = render_values_as(
        {"gateway": {"env": [{"name": n, "value": v} for n, v in fits.items()]}}
    )
    _load(rendered, tmp_path, monkeypatch)
    for name, entry in env_of(rendered.gateway()).items():  # the pod's environment
        if name.startswith("LLMAAS_") and "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    assert load_settings(tmp_path / "config.yaml").max_body_bytes == _IMAGE + _AROUND


@pytest.mark.parametrize("token", ["adminToken", "metricsToken"])
def test_a_header_token_that_is_not_printable_ascii_is_refused(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review 2026-12-07: a metrics token with an ö rendered, and every gateway refused
    to start (a client sends it in a header, read as Latin-1). Refused at render, naming the
    value and never showing it; printable ASCII, spaces and punctuation too, renders and
    loads; the key pepper, never sent, may hold any character."""
    bad = "metrics-töken-0123456789abcdef"
    with pytest.raises(
        helm.HelmRenderError,
        match=rf"gateway.secrets.{token}.value: has a character that is not printable ASCII",
    ) as refused:
        render_values({"gateway": {"secrets": {token: {"value": bad}}}})
    assert bad not in str(refused.value)
    good, pepper = "a token: 0123456789 ~!", "pepper-ö-0123456789abcdef"
    secrets = {token: {"value": good}, "keyPepper": {"value": pepper}}
    rendered = render_values_as({"gateway": {"secrets": secrets}})
    variable = "LLMAAS_ADMIN_TOKEN" if token == "adminToken" else "LLMAAS_METRICS_TOKEN"
    given = {variable: good, "LLMAAS_KEY_PEPPER": pepper}
    settings = _load(rendered, tmp_path, monkeypatch, given)
    assert (getattr(settings, variable.removeprefix("LLMAAS_").lower()), settings.key_pepper) == (
        good,
        pepper,
    )


@pytest.mark.parametrize(
    "cache",
    [
        {"modelCache": RWX},
        {"modelCache": {"existingClaim": "models"}},
        {"modelCache": {"enabled": False}},
        {"simulator": True},
        {"strategy": {"type": "Recreate"}, "replicas": 1},
    ],
)
def test_a_model_cache_several_pods_can_share_is_accepted(cache: dict[str, Any]) -> None:
    engine = {**ENGINE, "replicas": 2, "strategy": {"rollingUpdate": {"maxSurge": 1}}, **cache}
    render_values({"engines": [engine]})


@pytest.mark.parametrize(
    "network_policy",
    [{"enabled": False}, {"metricsFrom": [{"podSelector": {"matchLabels": {"app": "prom"}}}]}],
)
def test_engines_scraped_through_their_network_policy_are_accepted(
    network_policy: dict[str, Any],
) -> None:
    engine = {**ENGINE, "modelCache": RWX, "autoscaling": {"enabled": True}}
    monitoring = {"serviceMonitors": {"enabled": True}}
    render_values({"engines": [engine], "monitoring": monitoring, "networkPolicy": network_policy})


def test_alerts_without_a_way_in_for_prometheus_are_warned_of() -> None:
    """Alerts or the dashboard alone may read a Prometheus of the operator's own, which the
    engines' NetworkPolicy shuts out as well: rendered, with a note saying so."""
    shut = render_values_as({"monitoring": {"prometheusRule": {"enabled": True}}}).notes
    assert "networkPolicy.metricsFrom is empty" in shut
    opened = {"metricsFrom": [{"podSelector": {"matchLabels": {"app": "prom"}}}]}
    values = {"monitoring": {"prometheusRule": {"enabled": True}}, "networkPolicy": opened}
    assert "metricsFrom" not in render_values_as(values).notes
    assert "metricsFrom" not in render_values_as({}).notes


def test_jwt_values_the_chart_renders_are_ones_the_gateway_starts_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the issuer and audience the render check asks for, the gateway's Settings load."""
    jwt = {"issuer": "https://idp/", "audience": "llmaas", "algorithms": ["HS256"]}
    rendered = render_values_as({"gateway": {**JWT_KEY, "config": {"auth": {"jwt": jwt}}}})
    assert _load(rendered, tmp_path, monkeypatch).auth.jwt.enabled


def _hmac_values(secret: str, algorithms: list[str]) -> dict[str, Any]:
    jwt = {**ISSUED, "algorithms": algorithms}
    return {"gateway": {"jwt": {"hmacSecret": {"value": secret}}, "config": {"auth": {"jwt": jwt}}}}


@pytest.mark.parametrize(
    ("algorithms", "strongest", "needed"),
    [
        (["HS256"], "HS256", 32),
        (["HS384", "RS256"], "HS384", 48),
        (["HS512", "HS256"], "HS512", 64),
    ],
)
def test_an_inline_hmac_secret_is_as_long_as_its_algorithms_need(
    algorithms: list[str],
    strongest: str,
    needed: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's rule (RFC 7518 3.2: the hash's size, in bytes): a byte short is refused at
    render, naming the value; just long enough renders, and the gateway starts with that very
    secret and refuses the shorter one. "é" is two bytes: bytes are counted, not characters."""
    secret = "é" * (needed // 2)
    short = "x" + "é" * (needed // 2 - 1)
    with pytest.raises(
        helm.HelmRenderError,
        match=rf"gateway.jwt.hmacSecret.value: {needed - 1} bytes, but {strongest} needs at "
        rf"least {needed}",
    ):
        render_values(_hmac_values(short, algorithms))
    rendered = render_values_as(_hmac_values(secret, algorithms))
    hmac = "LLMAAS_AUTH__JWT__HMAC_SECRET"
    assert _load(rendered, tmp_path, monkeypatch, {hmac: secret}).auth.jwt.enabled
    with pytest.raises(ConfigError, match=f"at least {needed} bytes"):
        _load(rendered, tmp_path, monkeypatch, {hmac: short})


def test_an_hmac_secret_in_an_existing_secret_is_not_measured() -> None:
    """The chart cannot read it: its length is the operator's to get right (deploy.md)."""
    existing = {"jwt": {"hmacSecret": {"existingSecret": "idp", "key": "hmac"}}}
    config = {"auth": {"jwt": {**ISSUED, "algorithms": ["HS512"]}}}
    render_values({"gateway": {**existing, "config": config}})
    guide = DEPLOY_DOC.read_text()
    assert "32, 48 or 64 bytes for HS256, HS384 or HS512" in guide


def test_the_deploy_guide_names_each_secret_the_gateway_takes_and_the_chart_generates() -> None:
    """Found by review 2026-12-07: deploy.md's Secrets section, its "generated once" list and
    its objects table left out the metrics token, which the gateway takes from a Secret
    (LLMAAS_METRICS_TOKEN) and the chart generates like the admin token."""
    guide = DEPLOY_DOC.read_text()
    section = guide.split("\n## Secrets\n", 1)[1].split("\n## ", 1)[0]
    jwt = {"hmacSecret": {"value": "h" * 32}}
    config = {"auth": {"jwt": {**ISSUED, "algorithms": ["HS256"]}}}
    rendered = render_values_as({"gateway": {"jwt": jwt, "config": config}})
    from_secrets = [n for n, e in env_of(rendered.gateway()).items() if "valueFrom" in e]
    assert "LLMAAS_METRICS_TOKEN" in from_secrets
    for name in from_secrets:
        assert f"`{name}`" in section, name
    generated = " ".join(section.split("- neither (", 1)[1].split(")", 1)[0].split()).lower()
    (row,) = [line for line in guide.splitlines() if line.startswith("| Gateway |")]
    in_row = row.split("Secret `llmaas-gateway` (", 1)[1].split(")", 1)[0]
    for secret in render_values_as({}).kind("Secret"):
        for key in secret["data"]:
            assert key.replace("-", " ") in generated, key
            if secret["metadata"]["name"] == "demo-llmaas-gateway":
                assert key.replace("-", " ") in in_row, key


def test_the_deploy_guide_checks_values_with_a_render_not_helm_lint() -> None:
    """Helm's lint turns the chart's `fail` into an INFO log line: values the chart refuses
    (a ReadWriteOnce cache for two pods) lint clean. The guide's check renders them instead."""
    values, message = REFUSED["ReadWriteOnce cache, two replicas"]
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] > 1]
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values(values)
    guide = DEPLOY_DOC.read_text()
    assert "helm template llmaas ./helm/llmaas -n llm -f my-values.yaml > /dev/null" in guide
    assert "`helm lint` does not run the chart's own refusals" in guide


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_template_refuses_bad_values_naming_the_field(case: str) -> None:
    values, expected = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as refused:
        render_values(values)
    for fragment in expected:
        assert fragment in str(refused.value)


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_lint_reports_bad_values_as_errors(case: str) -> None:
    values, expected = BAD_VALUES[case]
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    errors = "\n".join(m["error"] for m in report["messages"] if m["severity"] == 3)
    for fragment in expected:
        assert fragment in errors


# Helm takes release names of up to 53 characters; with a nameOverride the base name of every
# object ("<release>-<nameOverride>") can be cut to 63, leaving no room for "-gateway", "-redis".
LONG_RELEASE = "customer-facing-llm-gateway-production-eu1-blue"


@pytest.mark.parametrize("name_override", ["llm-gateway-stack", "x" * 40])
def test_a_base_name_that_leaves_components_the_same_name_is_refused(name_override: str) -> None:
    """The gateway's Deployment, Service and Secret would be the engine's and Redis's, and one
    object would overwrite the other on install: refused, saying how to make room."""
    values = {"nameOverride": name_override, "engines": [ENGINE]}
    with pytest.raises(
        helm.HelmRenderError,
        match=r'the gateway and engines\[llama\] would both name their Deployment "customer-.*'
        r"cut to 63 characters; .* base name of 63\): use a shorter release name or nameOverride",
    ):
        render_values_as(values, release=LONG_RELEASE)


def test_a_base_name_of_61_characters_still_names_every_object_apart() -> None:
    rendered = render_values_as({"nameOverride": "x" * 7, "engines": [ENGINE]}, release="r" * 53)
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(names) == len(set(names))
    assert rendered.gateway()["metadata"]["name"] == f"{'r' * 53}-{'x' * 7}-g"


def test_settings_the_chart_leaves_alone_may_come_from_gateway_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """values.yaml's own example: a setting the chart neither sets nor sizes the pod from; a
    name the CLI beside the gateway reads, and one of no LLMAAS_* kind. The gateway loads them."""
    env = [
        {"name": "LLMAAS_UPSTREAM__MAX_CONNECTIONS", "value": "2000"},
        {"name": "LLMAAS_API_KEY", "value": "llmaas-key"},
        {"name": "PYTHONFAULTHANDLER", "value": "1"},
    ]
    rendered = render_values_as({"gateway": {"env": env}})
    assert [env_of(rendered.gateway())[e["name"]] for e in env] == env
    assert _load(rendered, tmp_path, monkeypatch).upstream.max_connections == 2000


def test_duplicate_engine_names_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match='engines: the name "llama" is used twice'):
        render_values({"engines": [ENGINE, {**ENGINE, "model": "other/model"}]})


def test_engine_entries_override_defaults_with_false_and_zero() -> None:
    """An entry's false or 0 wins over engineDefaults (a plain Helm merge would drop it)."""
    values = {
        "engineDefaults": {"simulator": True, "prefixCaching": True},
        "engines": [{**ENGINE, "simulator": False, "prefixCaching": False, "replicas": 0}],
    }
    (text,) = [t for p, t in render_values(values).items() if p.endswith("engines/deployment.yaml")]
    assert "vllm/vllm-openai" in text
    assert "--no-enable-prefix-caching" in text
    assert "replicas: 0" in text


def test_the_chart_values_pass_their_own_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        assert chart.schema is not None
        assert chart.schema["additionalProperties"] is False


def test_every_value_is_described_in_the_deploy_guide() -> None:
    guide = DEPLOY_DOC.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [
        path
        for path, key in _value_keys(values)
        if not re.search(rf"`[^`\n]*\b{re.escape(key)}\b[^`\n]*`", guide)
    ]
    assert undocumented == []


def _value_keys(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in values.items():
        yield prefix + key, key
        if isinstance(value, dict) and value and key not in _PASSED_THROUGH:
            yield from _value_keys(value, f"{prefix}{key}.")


def test_an_autoscaler_on_memory_alone_renders_no_empty_cpu_target() -> None:
    """The CPU metric was rendered without a value (the API server refuses the HPA); a CPU
    limit without a request counts (Kubernetes makes the request the limit)."""
    autoscaling = {
        "enabled": True,
        "targetCPUUtilizationPercentage": None,
        "targetMemoryUtilizationPercentage": 80,
    }
    rendered = render_values_as({"gateway": {"autoscaling": autoscaling}})
    (hpa,) = rendered.kind("HorizontalPodAutoscaler")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["memory"]
    limited = {"requests": {"cpu": None}, "limits": {"cpu": "1", "memory": "1Gi"}}
    render_values({"gateway": {"autoscaling": {"enabled": True}, "resources": limited}})
