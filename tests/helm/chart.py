"""The Helm chart as the tests see it: rendered by the embedded Helm (helm-python-sdk), offline,
for the default values and every ci/*-values.yaml, into plain objects to assert on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "llmaas"
RELEASE = "demo"
NAMESPACE = "llm"
_SUFFIX = "-values.yaml"
CASES = ("default", *sorted(p.name.removesuffix(_SUFFIX) for p in (CHART / "ci").glob("*.yaml")))

Obj = dict[str, Any]


def case_values(case: str) -> dict[str, Any]:
    """The values a case passes on top of the chart's values.yaml."""
    if case == "default":
        return {}
    loaded = yaml.safe_load((CHART / "ci" / f"{case}{_SUFFIX}").read_text())
    return dict(loaded or {})


@dataclass(frozen=True)
class Rendered:
    case: str
    values: dict[str, Any]  # the values Helm used: values.yaml with the case's on top
    objects: list[Obj]
    notes: str

    def kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def of(self, kind: str, component: str) -> list[Obj]:
        return [o for o in self.kind(kind) if component_of(o) == component]

    def workloads(self) -> list[Obj]:
        return self.kind("Deployment") + self.kind("StatefulSet")

    def gateway(self) -> Obj:
        (deployment,) = self.of("Deployment", "gateway")
        return deployment

    def engines(self) -> list[Obj]:
        return self.of("Deployment", "engine")

    def config_text(self) -> str:
        configmap = self.get("ConfigMap", self.gateway()["metadata"]["name"])
        return str(configmap["data"]["config.yaml"])


def component_of(obj: Obj) -> str:
    return str(obj["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj) -> Obj:
    (only,) = pod_spec(workload)["containers"]
    return dict(only)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(workload: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container(workload).get("env", [])}


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _objects(manifests: Mapping[str, str]) -> Iterator[Obj]:
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield doc


def render_values(values: dict[str, Any]) -> dict[str, str]:
    """Raw `helm template` output, template path → text; raises helm_python's errors."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def render(case: str) -> Rendered:
    return render_values_as(case_values(case), case)


def render_values_as(
    values: dict[str, Any], case: str = "custom", release: str = RELEASE
) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name=release, namespace=NAMESPACE)
        merged = chart.merge_values(values)
    notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
    return Rendered(case, merged, list(_objects(manifests)), notes)


class Renders:
    """Each case rendered once, on first use (shared objects: tests must not change them)."""

    def __init__(self) -> None:
        self._done: dict[str, Rendered] = {}

    def __getitem__(self, case: str) -> Rendered:
        if case not in self._done:
            self._done[case] = render(case)
        return self._done[case]
