from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.metrics import Metrics, forget_earlier_runs


def _series(metrics: Metrics, line: str) -> bool:
    return line in metrics.render().decode().splitlines()


def test_labels_hands_back_the_same_child_and_counts_in_it() -> None:
    metrics = Metrics()
    child = metrics.requests.labels("m", "chat/completions", "200")
    assert metrics.requests.labels("m", "chat/completions", "200") is child
    assert metrics.requests.labels(model="m", route="chat/completions", status="200") is child
    child.inc()
    metrics.requests.labels("m", "chat/completions", "200").inc(2)
    line = 'llmaas_requests_total{model="m",route="chat/completions",status="200"} 3.0'
    assert _series(metrics, line)


def test_a_removed_series_starts_again_from_zero() -> None:
    metrics = Metrics()
    metrics.inflight.labels("http://e:8000").inc(5)
    metrics.inflight.remove("http://e:8000")
    assert not _series(metrics, 'llmaas_inflight_requests{engine="http://e:8000"} 5.0')
    metrics.inflight.labels("http://e:8000").inc()  # a child of its own, not the removed one
    assert _series(metrics, 'llmaas_inflight_requests{engine="http://e:8000"} 1.0')
    metrics.engine_check_failures.labels("http://e:8000", "health").inc()
    metrics.engine_check_failures.clear()
    metrics.engine_check_failures.labels("http://e:8000", "health").inc()
    assert _series(
        metrics, 'llmaas_engine_check_failures_total{check="health",engine="http://e:8000"} 1.0'
    )


def test_the_ejections_help_names_every_failure_that_ejects() -> None:
    """It named connect errors, 5xx and /health: an engine ejected for timeouts (or broken
    connections) was ejected for a reason the metric said does not eject."""
    helps = [line for line in Metrics().render().decode().splitlines() if line.startswith("#")]
    (ejections,) = [h for h in helps if h.startswith("# HELP llmaas_engine_ejections_total ")]
    causes = ("refused connection", "5xx", "never gives", "timeouts", "broken connections")
    for cause in (*causes, "/health"):
        assert cause in ejections


def test_gauges_a_gone_process_left_in_the_directory_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's PROMETHEUS_MULTIPROC_DIR outlives a run: a stopped run's `engine_up 0`
    stayed in the next run's minima (LlmaasEngineDown firing for an engine that was up)."""
    gone = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f"gauge_livemin_{gone}.db", f"gauge_livesum_{gone}.db", f"counter_{gone}.db"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f"gauge_livemin_{os.getppid()}.db").write_bytes(b"")  # a process still running
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")  # this pid's, a run before
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    forget_earlier_runs()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"gauge_livemin_{os.getppid()}.db"]  # (what it counted stays)
    )
