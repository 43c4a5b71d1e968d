"""The Grafana dashboard the chart ships: it loads (uid, datasource variable, a layout without
overlaps), every query parses as PromQL, and it shows what an operator asks of the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from tests.monitoring.promql import (
    dashboard_queries,
    family,
    load_dashboard,
    panels,
    parse,
    selectors,
)

GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What the dashboard is for, as the series it must read.
SHOWN = {
    "requests per second by status and route": "llmaas_requests_total",
    "request latency": "llmaas_request_duration_seconds",
    "time to first token": "llmaas_time_to_first_token_seconds",
    "tokens per tenant": "llmaas_tokens_total",
    "rate-limit rejections": "llmaas_ratelimit_rejections_total",
    "rate limiter without Redis": "llmaas_ratelimit_unavailable_total",
    "engine queue": "vllm:num_requests_waiting",
    "engines running": "vllm:num_requests_running",
    "KV-cache usage": "vllm:kv_cache_usage_perc",
    "engine-side TTFT": "vllm:time_to_first_token_seconds",
    "gateway in flight per engine": "llmaas_inflight_requests",
    "engine ejections": "llmaas_engine_ejections_total",
    "engines up": "llmaas_engine_up",
    "engines up per model": "llmaas_model_engines_up",
    "usage records pending": "llmaas_usage_pending_records",
    "usage records lost": "llmaas_usage_lost_records_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_identity_and_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "llmaas-gateway"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns it


def test_prometheus_datasource_is_a_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_panels_tile_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) and pos[k] >= 0 for k in ("x", "y", "w", "h")), pos
        assert pos["w"] > 0, panel["title"]
        assert pos["h"] > 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_every_query_is_valid_promql(dashboard: dict[str, Any]) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    for query in queries:
        try:
            parse(query.expr)
        except ValueError as exc:
            pytest.fail(f"{query.where}: {exc}: {query.expr}")


def test_every_panel_shows_something(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_shows_what_operators_ask_for(dashboard: dict[str, Any]) -> None:
    read = {family(s.series) for q in dashboard_queries(dashboard) for s in selectors(q.expr)}
    missing = {what: series for what, series in SHOWN.items() if family(series) not in read}
    assert missing == {}


def test_latency_panels_show_the_quantiles(dashboard: dict[str, Any]) -> None:
    def quantiles(series: str) -> set[str]:
        return {
            q.expr.split(",")[0].removeprefix("histogram_quantile(")
            for q in dashboard_queries(dashboard)
            if q.expr.startswith("histogram_quantile(") and f"{series}_bucket" in q.expr
        }

    assert quantiles("llmaas_request_duration_seconds") == {"0.5", "0.9", "0.99"}
    assert quantiles("llmaas_time_to_first_token_seconds") >= {"0.5", "0.9"}
