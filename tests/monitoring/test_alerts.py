"""The alert rules the chart ships (helm/llmaas/files/alerts.yaml): well-formed rules with valid
PromQL, a severity and a summary each, covering the failures an operator must hear about."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.monitoring.promql import ALERTS, family, groupings, load_alert_rules, parse, selectors

DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")  # Prometheus' (and the CRD's) form
SEVERITIES = {"critical", "warning", "info"}
# What must page or warn, as the series whose alert says so.
COVERED = {
    "engine down": "llmaas_engine_up",
    "a model without engines (gone from DNS too)": "llmaas_model_engines_up",
    "high 5xx ratio": "llmaas_requests_total",
    "engine queue depth": "vllm:num_requests_waiting",
    "rate limiter without Redis": "llmaas_ratelimit_unavailable_total",
    "key store without Redis": "llmaas_auth_store_unavailable_total",
    "streams an engine breaks off": "llmaas_upstream_errors_total",
    "usage records pending": "llmaas_usage_pending_records",
    "usage records lost": "llmaas_usage_lost_records_total",
    "a Redis that may evict keys and usage": "llmaas_redis_may_evict",
    "Redis unreachable, with or without traffic": "llmaas_redis_up",
}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    return load_alert_rules()


def test_file_is_the_spec_of_a_prometheus_rule() -> None:
    spec = yaml.safe_load(ALERTS.read_text())
    assert list(spec) == ["groups"]
    names = [group["name"] for group in spec["groups"]]
    assert names
    assert len(names) == len(set(names))
    for group in spec["groups"]:
        assert set(group) == {"name", "rules"}, group["name"]
        assert group["rules"], group["name"]


def test_reads_the_same_with_or_without_tpl() -> None:
    # The chart may pass the file through `tpl`: Go template markup would be evaluated there.
    assert "{{" not in ALERTS.read_text()


def test_every_rule_is_complete(rules: list[dict[str, Any]]) -> None:
    names = [rule.get("alert") for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        name = rule.get("alert")
        assert isinstance(name, str), rule
        assert re.fullmatch(r"Llmaas[A-Z][A-Za-z]+", name), name
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert isinstance(rule.get("expr"), str), name
        assert rule["expr"].strip(), name
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: for {rule.get('for')!r}"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_every_expression_is_valid_promql(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        try:
            parse(rule["expr"])
        except ValueError as exc:
            pytest.fail(f"{rule['alert']}: {exc}: {rule['expr']}")


def test_brackets_balance(rules: list[dict[str, Any]]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    for rule in rules:
        open_: list[str] = []
        for char in re.sub(r'"[^"]*"', '""', rule["expr"]):  # not brackets inside label values
            if char in "([{":
                open_.append(char)
            elif char in pairs:
                assert open_, f"{rule['alert']}: unopened {char}"
                assert open_.pop() == pairs[char], f"{rule['alert']}: mismatched {char}"
        assert open_ == [], rule["alert"]


def test_covers_what_must_alert(rules: list[dict[str, Any]]) -> None:
    read = {family(s.series) for rule in rules for s in selectors(rule["expr"])}
    missing = {what: series for what, series in COVERED.items() if series not in read}
    assert missing == {}


def test_refusing_requests_is_critical(rules: list[dict[str, Any]]) -> None:
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert severity["LlmaasEngineDown"] == "critical"
    assert severity["LlmaasModelWithoutEngines"] == "critical"  # its requests all get 503
    assert severity["LlmaasRateLimiterUnavailable"] == "critical"  # failure_mode closed: 503s
    assert severity["LlmaasAuthStoreUnavailable"] == "critical"  # 503s whatever the mode
    assert severity["LlmaasUsageRecordsLost"] == "critical"


def test_alerts_on_failing_engines_outlive_the_engines_series(rules: list[dict[str, Any]]) -> None:
    """Found 2026-12-07: an engine that leaves DNS (a crashed or unready pod) takes every series
    of its own with it within seconds, so an alert that needs them by engine never fired for
    the engine that crashed."""
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    by_model = [g.labels for g in groupings(expressions["LlmaasModelWithoutEngines"])]
    assert by_model
    assert all("engine" not in labels for labels in by_model)
    # cuts: by engine (one bad engine of many) or over all (the engine's series gone)
    cuts = [g.labels for g in groupings(expressions["LlmaasEngineStreamsCut"])]
    assert any("engine" in labels for labels in cuts)
    assert any("engine" not in labels for labels in cuts)
