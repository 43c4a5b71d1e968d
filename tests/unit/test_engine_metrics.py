"""An engine's series in /metrics: removed with the engine when it leaves the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.metrics import Metrics
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine
from tests.support.logs import collected

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


def test_what_an_engine_that_left_still_had_under_way_writes_no_series() -> None:
    """A health check or a request under way when its engine left DNS: its failure, its
    ejection and the round's publishing wrote engine_up 0 again, for good (its alert fired
    for a pod that no longer exists)."""
    metrics = Metrics()
    observer = EngineMetrics(metrics)
    gone, stays = Engine(GONE), Engine(STAYS)
    observer.publish([gone, stays])
    observer.removed(gone)
    observer.check_failed(gone.url, "health", gone)  # its last check, failing as it stopped
    observer.ejected(gone)  # a request on it that failed
    observer.returned(gone)
    observer.publish([gone, stays])  # a health round that listed it before it left
    series = [line for line in metrics.render().decode().splitlines() if "engine=" in line]
    assert not [line for line in series if GONE in line]
    assert [line for line in series if STAYS in line and "engine_up" in line]
    observer.ejected(Engine(GONE))  # the same address back as a new engine: its own series
    assert GONE in metrics.render().decode()


def test_a_request_that_ends_after_its_engine_left_brings_no_series_back() -> None:
    """A request still on an engine as it left DNS counted itself as it ended: the engine's
    requests' and errors' series came back, for good (one label set more per pod replaced)."""
    metrics = Metrics()
    observer = EngineMetrics(metrics)
    observer.publish([Engine(GONE), Engine(STAYS)])
    observer.removed(Engine(GONE))
    for url in (GONE, STAYS):  # (relay._done, upstream failures: engine URLs, not engines)
        metrics.engine_requests.labels(url, "200").inc()
        metrics.upstream_errors.labels(url, "stream_cut").inc()
    text = metrics.render(engines=[STAYS]).decode()
    assert GONE not in text
    assert f'llmaas_engine_requests_total{{engine="{STAYS}",status="200"}} 1.0' in text


SCENARIO = f"""
from gateway.metrics import Metrics
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine
from tests.support.logs import collected
metrics = Metrics()
observer = EngineMetrics(metrics)
for url in ({GONE!r}, {STAYS!r}):
    metrics.engine_requests.labels(url, "200").inc()
    metrics.upstream_errors.labels(url, "timeout").inc()
    metrics.inflight.labels(url).set(0)
    metrics.engine_check_failures.labels(url, "health").inc()
    observer.ejected(Engine(url))
metrics.engine_check_failures.labels("dns://engines.test:8000", "dns").inc()
observer.removed(Engine({GONE!r}))
print(metrics.render(engines=[{STAYS!r}]).decode())
"""


def test_under_workers_an_engine_that_left_leaves_no_series_behind(tmp_path: Path) -> None:
    """With --workers N (prometheus_client's multiprocess files) removing a series did
    nothing: a pod ejected as it stopped stayed `llmaas_engine_up 0` (EngineDown firing for
    an engine that no longer exists) and every pod ever seen kept its series."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], env=env, capture_output=True, text=True, check=True
    )
    series = [line for line in done.stdout.splitlines() if "engine=" in line]
    assert not [line for line in series if GONE in line]
    kept = {line.split("{")[0] for line in series if STAYS in line}
    assert kept == {
        "llmaas_engine_requests_total",
        "llmaas_upstream_errors_total",
        "llmaas_inflight_requests",
        "llmaas_engine_check_failures_total",
        "llmaas_engine_up",
        "llmaas_engine_ejections_total",
    }
    assert (
        'llmaas_engine_check_failures_total{check="dns",engine="dns://engines.test:8000"} 1.0'
        in series
    )


def test_counters_that_alerts_read_exist_at_0_before_their_first_event() -> None:
    """A labelled series used to appear at its first event, already 1: Prometheus's increase()
    and rate() take that first event for the series' start, so EngineFlapping and the rate
    limiter alerts missed it (a single ejection or refusal never showed)."""
    metrics = Metrics()
    EngineMetrics(metrics).publish([Engine(STAYS)])
    series = metrics.render().decode().splitlines()
    assert f'llmaas_engine_ejections_total{{engine="{STAYS}"}} 0.0' in series
    for kind in ("stream_cut", "stream_timeout"):  # (LlmaasEngineStreamsCut)
        assert f'llmaas_upstream_errors_total{{engine="{STAYS}",kind="{kind}"}} 0.0' in series
    for mode in ("open", "closed"):
        assert f'llmaas_ratelimit_unavailable_total{{failure_mode="{mode}"}} 0.0' in series


def test_an_engine_back_from_a_long_outage_is_next_ejected_for_its_next_period() -> None:
    """Found 2026-12-06: failed probes raised the back-off level, so after a 30 s restart the
    next 1 s blip logged "ejected for 60s (ejection 2"; it is the second ejection's 2 s."""
    engine = Engine(GONE, observer=EngineMetrics(Metrics()))
    with collected("llmaas.routing") as logs:
        engine.mark_down()
        for _ in range(30):  # down for 30 s of probes
            engine.probe_failed("connect", "refused", engine.health.until)
        engine.probe_ok(engine.health.until)
        engine.mark_down()
    said = [r.getMessage() for r in logs.records if "ejected" in r.getMessage()]
    assert said[0].startswith(f"engine {GONE} ejected for 1s (ejection 1,"), said
    assert said[1].startswith(f"engine {GONE} ejected for 2s (ejection 2,"), said
    assert len(said) == 2, said
