"""Bad values are refused before anything reaches a cluster, by values.schema.json (for
`helm install`, `template` and `lint` alike), with a message that names the offending field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import CHART, NAMESPACE, render_values

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
}


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
