"""An engine's series in /metrics: removed with the engine when it leaves the registry."""

from __future__ import annotations

from gateway.metrics import Metrics
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine

GONE = "http://10.0.0.7:8000"
STAYS = "http://10.0.0.8:8000"


def test_an_engine_that_left_leaves_no_series_behind() -> None:
    """Engines leaving DNS (pods replaced, each with a new address) kept their requests',
    in-flight and upstream-error series forever: /metrics grew with every pod ever seen."""
    metrics = Metrics()
    observer = EngineMetrics(metrics)
    for url in (GONE, STAYS):
        metrics.engine_requests.labels(url, "200").inc()
        metrics.engine_requests.labels(url, "500").inc()
        metrics.upstream_errors.labels(url, "timeout").inc()
        metrics.inflight.labels(url).set(0)
        metrics.engine_check_failures.labels(url, "health").inc()
        observer.ejected(Engine(url))
    observer.removed(Engine(GONE))
    series = [line for line in metrics.render().decode().splitlines() if "engine=" in line]
    assert not [line for line in series if GONE in line]
    assert len([line for line in series if STAYS in line]) > 6
