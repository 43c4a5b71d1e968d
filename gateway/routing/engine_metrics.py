"""Per-engine health metrics: up, ejections, failed background checks (engine labels only),
and a log line when an engine is ejected or comes back."""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

from gateway.metrics import Metrics
from gateway.routing.engines import Engine, ModelPool

# Upstream errors an alert reads (LlmaasEngineStreamsCut): their series exist at 0 from when
# the engine is seen, so increase() and rate() count the first one (a series born at 1 is not
# counted, and one removed with its engine seconds later was never seen to rise).
STREAM_FAILURES = ("stream_cut", "stream_timeout")


class EngineMetrics:
    """The registry's EngineObserver: keeps `llmaas_engine_*` in step with engine health.

    Series of an engine that leaves the registry (DNS), these and its requests', in-flight
    requests' and upstream errors', are removed, so labels stay bounded by the engines that
    exist now (pods that come and go under a headless Service each have a new address).
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.log = logging.getLogger("llmaas.routing")
        # Engines that left: what is still under way on them (a health check, a request that
        # fails) writes no series of theirs again (an engine_up 0 for a pod that no longer
        # exists fired its alert for good). One that comes back is a new Engine object.
        self.gone: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._inflight: dict[str, Any] = {}  # llmaas_inflight_requests' child, by engine URL

    def ejected(self, engine: Engine) -> None:
        if engine in self.gone:
            return
        self.metrics.engine_up.labels(engine.url).set(0)
        self.metrics.engine_ejections.labels(engine.url).inc()
        health = engine.health
        last = engine.errors[-1] if engine.errors else None
        why = "?" if last is None else f"{last.kind}: {last.detail}" if last.detail else last.kind
        self.log.warning(
            "engine %s ejected for %gs (ejection %d, %d failures in a row; last: %s)",
            engine.url,
            health.policy.backoff(health.level - 1),  # (_eject has raised the level)
            health.ejections,
            health.consecutive_failures,
            why,
        )

    def returned(self, engine: Engine) -> None:
        if engine in self.gone:
            return
        self.metrics.engine_up.labels(engine.url).set(1)
        self.log.info("engine %s is back: /health answered 200", engine.url)

    def inflight(self, engine: Engine) -> None:
        """llmaas_inflight_requests follows the engine's own count, from when a request is
        sent (it was counted once the answer began: a stream waiting for its first token, in
        an engine's queue, was not, as the admin API's engines view and the
        max_connections_per_engine bound count it)."""
        if engine in self.gone:
            return
        child = self._inflight.get(engine.url)
        if child is None:
            child = self._inflight[engine.url] = self.metrics.inflight.labels(engine.url)
        child.set(engine.inflight)

    def removed(self, engine: Engine) -> None:
        self.gone.add(engine)
        self._inflight.pop(engine.url, None)
        m = self.metrics
        for metric in (m.engine_up, m.engine_ejections):
            with contextlib.suppress(KeyError):  # never had a series
                metric.remove(engine.url)
        for check in ("health", "models"):
            with contextlib.suppress(KeyError):
                m.engine_check_failures.remove(engine.url, check)
        with contextlib.suppress(KeyError):
            m.inflight.remove(engine.url)  # (a request still on it counts in a detached child)
        for labelled in (m.engine_requests, m.upstream_errors):
            labelled.remove_by_labels({"engine": engine.url})

    def publish(self, engines: list[Engine]) -> None:
        for engine in engines:
            if engine in self.gone:
                continue
            self.metrics.engine_up.labels(engine.url).set(1 if engine.health.is_up() else 0)
            self.metrics.engine_ejections.labels(engine.url)  # 0 until the first: increase()
            # over the alert's window counts that one too (a series born at 1 is not counted)
            for kind in STREAM_FAILURES:
                self.metrics.upstream_errors.labels(engine.url, kind)

    def publish_models(self, pools: list[ModelPool]) -> None:
        """llmaas_model_engines_up: each configured model's engines up now. An engine that
        leaves DNS (a crashed or unready pod of a headless Service) takes every series of its
        own with it, so no `llmaas_engine_up 0` ever said that a model had none left. An
        engine whose /v1/models does not list the model (a typo in the config or in its
        --served-model-name) is not counted: it answers the model's every request 404."""
        for pool in pools:
            up = sum(1 for e in pool.engines if e.health.is_up() and e.lists(pool.name))
            self.metrics.model_engines_up.labels(pool.name).set(up)

    def check_failed(self, target: str, check: str, engine: Engine | None = None) -> None:
        """A background check of `target` failed (`engine`: the engine it is, if one)."""
        if engine is not None and engine in self.gone:
            return
        self.metrics.engine_check_failures.labels(target, check).inc()
