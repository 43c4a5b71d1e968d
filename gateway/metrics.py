"""Prometheus metrics, one registry per app (no module globals), multiprocess-aware.

With `--workers N` the CLI sets PROMETHEUS_MULTIPROC_DIR before the workers start; each
worker then writes its values to files there and /metrics aggregates all of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from typing import Any, Self

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

from gateway.finetune.names import base_of


def model_label(model: str) -> str:
    """A model as metrics name it: a fine-tuned model as `ft:<base>`, its base's. Its own name
    holds its tenant and the client's suffix, one more name per job: the labels would have
    grown without bound and carried free text, which DESIGN.md rules out (found by review)."""
    if not model.startswith("ft:"):
        return model
    base = base_of(model)
    return "ft:" if base is None else f"ft:{base}"


class _KeptChildren(MetricWrapperBase):
    """labels() answered from a dict of the children already made: prometheus_client checks
    the count, turns every value into a string and takes a lock on each call (1.4-2.7 µs here,
    ~0.35 µs from the dict), and a request makes about six such calls. The children are the
    ones prometheus_client made and keeps; removing one forgets it here too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[tuple[object, ...], Self] = {}

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        child = self._kept.get(labelvalues)
        if child is None:
            child = super().labels(*labelvalues, **labelkwargs)
            if not labelkwargs:
                self._kept[labelvalues] = child
        return child

    def remove(self, *labelvalues: Any) -> None:
        super().remove(*labelvalues)
        self._kept.clear()  # rare (an engine left): made again on their next use

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        super().remove_by_labels(labels)
        self._kept.clear()

    def clear(self) -> None:
        super().clear()
        self._kept.clear()


class Counter(_KeptChildren, prometheus_client.Counter):
    pass


class Gauge(_KeptChildren, prometheus_client.Gauge):
    pass


class Histogram(_KeptChildren, prometheus_client.Histogram):
    pass


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        # No `*_created` series (a counter's or histogram's start time, one more series each:
        # a quarter of a scrape with many tenant-model pairs; Prometheus reads resets without
        # them). prometheus_client keeps this switch process-wide.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "llmaas_requests", "Requests answered", ["model", "route", "status"], registry=reg
        )
        self.duration = Histogram(
            "llmaas_request_duration_seconds",
            "Time from request to the end of the response",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "llmaas_time_to_first_token_seconds",
            "Time from request to the first streamed frame",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.upstream_errors = Counter(
            "llmaas_upstream_errors",
            "Failures talking to engines",
            ["engine", "kind"],
            registry=reg,
        )
        self.ratelimit_rejections = Counter(
            "llmaas_ratelimit_rejections",
            "Requests refused by a rate or concurrency limit",
            ["tenant", "scope", "kind"],
            registry=reg,
        )
        self.ratelimit_unavailable = Counter(
            "llmaas_ratelimit_unavailable",
            "Admissions decided without Redis (failure_mode open admits, closed refuses)",
            ["failure_mode"],
            registry=reg,
        )
        for mode in ("open", "closed"):  # 0 from the start: an alert's increase() or rate()
            self.ratelimit_unavailable.labels(mode)  # counts the first outage's first refusal
        self.auth_store_unavailable = Counter(
            "llmaas_auth_store_unavailable",
            "Requests refused with 503 auth_store_unavailable: their key or tenant was not "
            "cached (or past auth.stale_max_s) and Redis could not be read",
            registry=reg,
        )
        self.ratelimit_releases = Counter(
            "llmaas_ratelimit_releases",
            "Admissions given up on (answered by failure_mode) or fetched ahead and not used, "
            "released in Redis by outcome: "
            "refunded (it had run), cancelled (it had not), released (already), "
            "expired (retried until its lease expired), dropped (release queue full)",
            ["outcome"],
            registry=reg,
        )
        self.ratelimit_prefetched = Counter(
            "llmaas_ratelimit_prefetched",
            "Admissions fetched ahead for a busy key's next requests (limits.prefetch_max), by "
            "outcome: used (a request took it, no round trip to Redis), expired (not taken "
            "within limits.prefetch_ttl_s: released)",
            ["outcome"],
            registry=reg,
        )
        self.requests_shed = Counter(
            "llmaas_requests_shed",
            "Requests refused with 503 engines_overloaded: every engine of the model had "
            "routing.max_waiting_per_engine requests waiting",
            ["model"],
            registry=reg,
        )
        self.gateway_busy = Counter(
            "llmaas_gateway_busy",
            "Requests refused with 503 gateway_busy at once: this process had "
            "max_inflight_requests in flight, or upstream.max_connections (in all, or to each "
            "of the model's engines)",
            registry=reg,
        )
        self.engine_requests = Counter(
            "llmaas_engine_requests",
            "Requests answered, by the engine that answered them and the status their client "
            "got (499: the client left before the answer's end)",
            ["engine", "status"],
            registry=reg,
        )
        self.inflight = Gauge(
            "llmaas_inflight_requests",
            "Requests in flight per engine, from when each is sent (waiting for its first token "
            "included)",
            ["engine"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.engine_up = Gauge(
            "llmaas_engine_up",
            "1 while the engine takes requests, 0 while ejected (back once /health answers 200)",
            ["engine"],
            registry=reg,
            multiprocess_mode="livemin",  # down if any worker has ejected it
        )
        self.model_engines_up = Gauge(
            "llmaas_model_engines_up",
            "Engines of a configured model taking requests now (0: none, its requests get 503). "
            "Kept when engines leave: a pod gone from DNS takes its llmaas_engine_up with it",
            ["model"],
            registry=reg,
            multiprocess_mode="livemin",  # as llmaas_engine_up: fewer if any worker ejected one
        )
        self.engine_ejections = Counter(
            "llmaas_engine_ejections",
            "Times the engine was ejected: at a refused connection, or after "
            "routing.failures_to_eject in a row of 5xx answers, answers the OpenAI API never "
            "gives, timeouts, broken connections and failed /health checks",
            ["engine"],
            registry=reg,
        )
        self.engine_check_failures = Counter(
            "llmaas_engine_check_failures",
            "Background checks that failed (check: health, models, dns; engine: URL or dns entry)",
            ["engine", "check"],
            registry=reg,
        )

        self.tokens = Counter(
            "llmaas_tokens",
            "Tokens metered, as engines reported them (kind: prompt or completion)",
            ["tenant", "model", "kind"],
            registry=reg,
        )
        self.redis_memory_used = Gauge(
            "llmaas_redis_memory_used_bytes",
            "Redis's used_memory, as this gateway last read it (INFO memory)",
            registry=reg,
            multiprocess_mode="livemax",  # every worker reads the same Redis
        )
        self.redis_maxmemory = Gauge(
            "llmaas_redis_maxmemory_bytes",
            "Redis's maxmemory (0: none set), as this gateway last read it",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.redis_up = Gauge(
            "llmaas_redis_up",
            "1: this gateway's last read of Redis's INFO (every 30 s) was answered; 0: it failed "
            "(down, refusing, or silent past redis_timeout_s), or none yet",
            registry=reg,
            multiprocess_mode="livemin",  # any worker that cannot reach it
        )
        self.redis_may_evict = Gauge(
            "llmaas_redis_may_evict",
            "1: Redis's maxmemory-policy is not noeviction, it may evict the gateway's keys",
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.usage_pending = Gauge(
            "llmaas_usage_pending_records",
            "Usage settlements not yet in Redis (retry queue and this process's spill files)",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.usage_spilled = Counter(
            "llmaas_usage_spilled_records",
            "Usage settlements written to a spill file (queue full or shutdown without Redis)",
            registry=reg,
        )
        self.usage_foreign_spill = Gauge(
            "llmaas_usage_foreign_spill_records",
            "Usage settlements in spill files of another or an unknown ledger (kept, not replayed)",
            registry=reg,
            multiprocess_mode="livemax",  # every worker sees the same directory
        )
        self.usage_spill_failures = Counter(
            "llmaas_usage_spill_failures",
            "Spill file writes that failed (the settlements stay queued in memory)",
            registry=reg,
        )
        self.usage_lost = Counter(
            "llmaas_usage_lost_records",
            "Settlements neither Redis nor the spill file took at shutdown (logged in full)",
            registry=reg,
        )
        self.usage_write_failures = Counter(
            "llmaas_usage_write_failures",
            "Attempts to write usage settlements that Redis did not take",
            registry=reg,
        )

    def render(self, engines: Collection[str] | None = None) -> bytes:
        """`engines`: the URLs of the engines the registry has now (None: every series).
        The series of an engine that left (EngineMetrics.removed) are left out: under
        --workers N they stay in the workers' files, where prometheus_client cannot remove
        them (a pod gone since was `llmaas_engine_up 0`, EngineDown, until the gateway
        restarted), and a request still under way on it as it left writes its series again
        as it ends (one more label set per pod replaced, for good)."""
        source: prometheus_client.registry.Collector = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            source = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call, unused-ignore]
        elif engines is None:
            return generate_latest(self.registry)
        collecting = CollectorRegistry()
        collecting.register(source if engines is None else _EnginesNow(source, engines))
        return generate_latest(collecting)


def forget_process(pid: int) -> None:
    """Under --workers N: the gauges of worker `pid`, which has exited, leave the aggregate
    (its counters stay: what it counted happened)."""
    if os.path.isdir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call, unused-ignore]


def forget_earlier_runs() -> None:
    """At start, before this process makes a gauge: the gauges of every process gone that
    left them in PROMETHEUS_MULTIPROC_DIR, and of this pid (an operator's directory outlives
    a run: a stopped or killed run's `llmaas_engine_up 0` stayed in the next run's minima; a
    container's gateway is pid 1 on every run)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is None:
        return
    try:
        names = os.listdir(directory)
    except OSError:  # (missing: prometheus_client says so as the app starts)
        return
    pids = {int(m.group(1)) for f in names if (m := _LIVE_GAUGE.fullmatch(f))}
    for pid in pids:
        if pid == os.getpid() or not _running(pid):
            forget_process(pid)


_LIVE_GAUGE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's)
        return True
    return True


# What EngineMetrics.removed removes: every series of these families by its engine label, and
# llmaas_engine_check_failures's of the checks made on an engine (a DNS name's are not).
_PER_ENGINE = frozenset(
    {
        "llmaas_engine_up",
        "llmaas_engine_ejections",
        "llmaas_inflight_requests",
        "llmaas_engine_requests",
        "llmaas_upstream_errors",
    }
)
_CHECKS = "llmaas_engine_check_failures"
_ENGINE_CHECKS = frozenset({"health", "models"})


class _EnginesNow(prometheus_client.registry.Collector):
    """The workers' values, without the series of engines that left."""

    def __init__(self, collector: prometheus_client.registry.Collector, engines: Collection[str]):
        self.collector = collector
        self.engines = frozenset(engines)

    def collect(self) -> Iterable[prometheus_client.Metric]:
        for family in self.collector.collect():
            if family.name in _PER_ENGINE:
                family.samples = [s for s in family.samples if s.labels["engine"] in self.engines]
            elif family.name == _CHECKS:
                family.samples = [s for s in family.samples if self._kept_check(s.labels)]
            yield family

    def _kept_check(self, labels: dict[str, str]) -> bool:
        return labels["check"] not in _ENGINE_CHECKS or labels["engine"] in self.engines
