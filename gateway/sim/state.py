"""The simulator's counters: running requests, token totals, the last request, /metrics text."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gateway.sim.faults import fails_at


@dataclass(slots=True)
class Generation:
    """One request while it runs: what it has put into the KV cache and the counters."""

    state: SimState
    kv_tokens: int = 0

    def prefilled(self, prompt_tokens: int) -> None:
        self.state.prompt_tokens_total += prompt_tokens
        self.kv_tokens += prompt_tokens
        self.state.kv_tokens += prompt_tokens

    def generated(self, tokens: int) -> None:
        self.state.generation_tokens_total += tokens
        self.kv_tokens += tokens
        self.state.kv_tokens += tokens


@dataclass(slots=True)
class SimState:
    """Lives on `app.state.sim`; only the event loop's thread touches it, so no locks."""

    model_name: str
    kv_cache_tokens: int
    fail_rate: float = 0.0
    running: int = 0
    total_requests: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    max_running_seen: int = 0
    kv_tokens: int = 0
    # Requests reported as waiting in vllm:num_requests_waiting: a queue held by other clients,
    # set by tests through POST /sim/queue (the simulator itself never makes a request wait).
    waiting: int = 0
    last_request: dict[str, Any] | None = None
    _failure_index: int = field(default=0, repr=False)

    @contextmanager
    def generation(self) -> Iterator[Generation]:
        """Count a request as running until it ends for any reason (finish, error, disconnect)."""
        self.running += 1
        self.max_running_seen = max(self.max_running_seen, self.running)
        current = Generation(self)
        try:
            yield current
        finally:
            self.running -= 1
            self.kv_tokens -= current.kv_tokens

    def record(self, headers: dict[str, str], body: object, raw: bytes) -> None:
        """Remember an inference request as it arrived, parsed and byte for byte (for tests of
        what a proxy forwarded)."""
        self.total_requests += 1
        self.last_request = {
            "headers": headers,
            "body": body,
            "raw": raw.decode("utf-8", "replace"),
        }

    def next_fails(self) -> bool:
        """Whether the next request is one of the configured `fail_rate` that must fail."""
        if self.fail_rate <= 0.0:
            return False
        self._failure_index += 1
        return fails_at(self._failure_index, self.fail_rate)

    def reset(self) -> None:
        """Zero the counters and the set queue; live requests stay counted in `running` and the
        KV cache."""
        self.total_requests = self.prompt_tokens_total = self.generation_tokens_total = 0
        self.waiting = 0
        self.max_running_seen = self.running
        self.last_request = None
        self._failure_index = 0

    def kv_cache_usage(self) -> float:
        return min(1.0, self.kv_tokens / self.kv_cache_tokens)

    def snapshot(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "total_requests": self.total_requests,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "max_running_seen": self.max_running_seen,
            "kv_cache_usage_perc": self.kv_cache_usage(),
            "last_request": self.last_request,
        }

    def metrics_text(self) -> str:
        """Prometheus text with vLLM's metric names, HELP texts and labels."""
        labels = f'{{engine="0",model_name="{_escape(self.model_name)}"}}'
        families = (
            ("num_requests_running", "gauge", "Number of requests in model execution batches."),
            ("num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
            ("kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
            ("prompt_tokens", "counter", "Number of prefill tokens processed."),
            ("generation_tokens", "counter", "Number of generation tokens processed."),
            (
                "prefix_cache_queries",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            (
                "prefix_cache_hits",
                "counter",
                "Prefix cache hits, in terms of number of cached tokens.",
            ),
        )
        # Every prompt token is looked up in the prefix cache; the simulator keeps none: no hits.
        values = (
            self.running,
            self.waiting,
            self.kv_cache_usage(),
            self.prompt_tokens_total,
            self.generation_tokens_total,
            self.prompt_tokens_total,
            0,
        )
        lines: list[str] = []
        for (name, kind, help_text), value in zip(families, values, strict=True):
            sample = f"vllm:{name}_total" if kind == "counter" else f"vllm:{name}"
            lines.append(f"# HELP {sample} {help_text}")
            lines.append(f"# TYPE {sample} {kind}")
            lines.append(f"{sample}{labels} {float(value)!r}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
