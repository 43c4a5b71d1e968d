"""The chart's monitoring files, read as the PromQL they hold: which series and labels it reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser as pq
import yaml

FILES = Path(__file__).resolve().parents[2] / "helm" / "llmaas" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
ALERTS = FILES / "alerts.yaml"

# Grafana fills these in before Prometheus sees the query; a value of the right kind stands in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$model": ".*"}
# Labels Prometheus adds to every scraped series (ServiceMonitor targets), not the exporter.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "service", "pod", "container"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Metric-looking words in any query, the template variables' label_values(...) included.
METRIC_WORD = re.compile(r"\b(?:llmaas_[a-z_]+|vllm:[a-z0-9_:]+)")


@dataclass(frozen=True, slots=True)
class Query:
    where: str  # "panel 'Error ratio' A", "alert LlmaasEngineDown"
    expr: str


@dataclass(frozen=True, slots=True)
class Selector:
    series: str  # as queried: llmaas_requests_total, vllm:time_to_first_token_seconds_bucket
    labels: frozenset[str]  # label names its matchers name


@dataclass(frozen=True, slots=True)
class Grouping:
    labels: frozenset[str]  # by (...) or on (...) labels
    selectors: tuple[Selector, ...]  # the series they group (any of them may carry a label)


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def load_alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_queries(rules: list[dict[str, Any]]) -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["expr"]) for rule in rules]


def parse(expr: str) -> pq.Expr:
    """The query as Prometheus gets it (Grafana's variables filled in); ValueError if invalid."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return pq.parse(expr)


def _selectors(expr: pq.Expr) -> tuple[Selector, ...]:
    found: list[Selector] = []

    def visit(node: pq.Expr) -> None:
        if isinstance(node, pq.VectorSelector) and node.name is not None:
            names = frozenset(m.name for m in node.matchers.matchers)
            found.append(Selector(node.name, names - {"__name__"}))

    pq.walk(expr, pre_visit=visit)
    return tuple(found)


def selectors(expr: str) -> tuple[Selector, ...]:
    return _selectors(parse(expr))


def groupings(expr: str) -> list[Grouping]:
    """Each `by (...)` of an aggregation and `on (...)` of a binary operation, with the series
    under it."""
    found: list[Grouping] = []

    def visit(node: pq.Expr) -> None:
        if (
            isinstance(node, pq.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == pq.AggModifierType.By
        ):
            found.append(Grouping(frozenset(node.modifier.labels), _selectors(node.expr)))
        if isinstance(node, pq.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None and matching.type == pq.LabelModifierType.Include:
                under = _selectors(node.lhs) + _selectors(node.rhs)
                found.append(Grouping(frozenset(matching.labels), under))

    pq.walk(parse(expr), pre_visit=visit)
    return found


def mentioned() -> set[str]:
    """Every metric-looking word in the dashboard and the alerts, whatever holds it (a template
    variable's label_values(...), a description): none may name a series that does not exist."""
    return set(METRIC_WORD.findall(DASHBOARD.read_text() + ALERTS.read_text()))


def family(series: str) -> str:
    """The metric a series belongs to: a histogram's _bucket/_sum/_count stripped."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series
