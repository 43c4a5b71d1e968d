"""The chart lints strictly and renders, for every values case, into objects a current Kubernetes
accepts: core kinds against Kubernetes' own schemas (no unknown fields), the operators' kinds
(ServiceMonitor, PrometheusRule, ScaledObject) against the fields they require."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from gateway.metrics import Metrics
from gateway.routing import load
from tests.helm.chart import (
    CASES,
    CHART,
    NAMESPACE,
    RELEASE,
    Obj,
    Rendered,
    Renders,
    case_values,
    env_of,
    selects,
)

K8S_VERSION = latest_version()  # the newest Kubernetes the installed kubernetes-validate knows
OPERATOR_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


@pytest.mark.parametrize("case", CASES)
def test_lint_strict_passes(case: str) -> None:
    report = helm.lint(
        CHART, case_values(case), strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == []
    assert problems == []


def test_every_core_object_validates_against_kubernetes(rendered: Rendered) -> None:
    core = [o for o in rendered.objects if o["kind"] not in OPERATOR_KINDS]
    assert {"Deployment", "Service", "ConfigMap"} <= {o["kind"] for o in core}
    for obj in core:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{rendered.case}: {name} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{rendered.case}: {name}: {exc.message}")


def test_objects_belong_to_the_release(rendered: Rendered) -> None:
    for obj in rendered.objects:
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE, meta["name"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, meta["name"]
        assert len(meta["name"]) <= 63, meta["name"]
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered.objects]
    assert len(keys) == len(set(keys)), "two objects of one kind share a name"


def test_operator_objects_have_their_required_fields(rendered: Rendered) -> None:
    for obj in rendered.objects:
        kind = obj["kind"]
        if kind not in OPERATOR_KINDS:
            continue
        assert obj["apiVersion"] == OPERATOR_KINDS[kind]
        if kind == "ServiceMonitor":
            _check_service_monitor(rendered, obj)
        elif kind == "PrometheusRule":
            _check_prometheus_rule(obj)
        else:
            _check_scaled_object(rendered, obj)


def test_monitoring_case_renders_every_operator_kind(renders: Renders) -> None:
    kinds = {o["kind"] for o in renders["monitoring"].objects}
    assert set(OPERATOR_KINDS) <= kinds
    assert not set(OPERATOR_KINDS) & {o["kind"] for o in renders["default"].objects}


def test_engines_scale_down_only_after_a_stable_window(renders: Renders) -> None:
    """KEDA's cooldownPeriod only applies to and from zero (minReplicas >= 1 rules that out):
    what keeps a GPU pod that took minutes to load is its HPA's scale-down window."""
    (scaled,) = renders["monitoring"].kind("ScaledObject")
    assert "cooldownPeriod" not in scaled["spec"]
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 900}}  # the case's value
    defaults = renders["default"].values["engineDefaults"]["autoscaling"]
    assert defaults["scaleDownStabilizationSeconds"] >= 300, "longer than a model load"


def test_the_gateway_is_scraped_with_the_metrics_token_it_is_given(renders: Renders) -> None:
    """/metrics answers 401 without a token: the ServiceMonitor sends the one the gateway has."""
    rendered = renders["monitoring"]
    gateway_monitor, engines_monitor = rendered.kind("ServiceMonitor")
    ref = env_of(rendered.gateway())["LLMAAS_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    (endpoint,) = gateway_monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": ref}
    (secret,) = [s for s in rendered.kind("Secret") if s["metadata"]["name"] == ref["name"]]
    assert ref["key"] in secret["data"]
    assert all("authorization" not in e for e in engines_monitor["spec"]["endpoints"])


def test_alerts_are_the_chart_file_and_the_users_groups(renders: Renders) -> None:
    rendered = renders["monitoring"]
    (rule,) = rendered.kind("PrometheusRule")
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
    extra = rendered.values["monitoring"]["prometheusRule"]["additionalGroups"]
    assert extra
    assert rule["spec"]["groups"] == shipped + extra
    alerts = {r["alert"] for g in shipped for r in g["rules"]}
    assert {
        "LlmaasEngineDown",
        "LlmaasHighErrorRate",
        "LlmaasEngineQueueDeep",
        "LlmaasRateLimiterUnavailable",
        "LlmaasUsageRecordsPending",
    } <= alerts
    _assert_gateway_metrics(json.dumps(shipped))
    vllm = {load.RUNNING, load.WAITING, load.KV_USAGE, load.PREFIX_HITS, load.PREFIX_QUERIES}
    for name in re.findall(r"\bvllm:[a-z_]+", json.dumps(shipped)):
        assert name in vllm, f"{name} is not a vLLM metric the gateway reads"


def test_grafana_dashboard_is_the_chart_file_labelled_for_the_sidecar(renders: Renders) -> None:
    (configmap,) = [
        c for c in renders["monitoring"].kind("ConfigMap") if "grafana_dashboard" in _labels(c)
    ]
    assert _labels(configmap)["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "LLM"
    (text,) = configmap["data"].values()
    assert text.strip() == (CHART / "files" / "grafana-dashboard.json").read_text().strip()
    dashboard = json.loads(text)
    assert dashboard["panels"]
    _assert_gateway_metrics(text)


def _labels(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("labels", {}))


def _assert_gateway_metrics(text: str) -> None:
    exported = _gateway_metric_names()
    names = set(re.findall(r"\bllmaas_[a-z_]+", text))
    assert names
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in exported or base in exported, f"{name} is not a gateway metric"


def _gateway_metric_names() -> set[str]:
    exposition = Metrics().render().decode()
    return set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.MULTILINE))


def _check_service_monitor(rendered: Rendered, monitor: Obj) -> None:
    spec = monitor["spec"]
    services = [
        s for s in rendered.kind("Service") if selects(spec["selector"]["matchLabels"], _labels(s))
    ]
    assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert _DURATION.match(endpoint["interval"])
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def _check_prometheus_rule(rule: Obj) -> None:
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        assert group["rules"]
        for r in group["rules"]:
            assert r["alert"]
            assert r["expr"].strip()
            assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
            assert r["expr"].count("{") == r["expr"].count("}"), r["alert"]
            assert "for" not in r or _DURATION.match(r["for"])
            assert r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"]


def _check_scaled_object(rendered: Rendered, scaled: Obj) -> None:
    spec: dict[str, Any] = scaled["spec"]
    target = rendered.get("Deployment", spec["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], "KEDA owns the replica count"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert 0 <= behavior["scaleDown"]["stabilizationWindowSeconds"] <= 3600  # the HPA's bounds
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert load.WAITING in meta["query"]
    assert f'service="{target["metadata"]["name"]}"' in meta["query"]
    assert float(meta["threshold"]) > 0
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"
