"""What one simulated engine serves and how fast it pretends to be."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _default_models() -> list[str]:
    return ["sim-model"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of one simulator process; every request may override the timings (see faults)."""

    # served names; the first one is the `model_name` label of /metrics
    models: list[str] = field(default_factory=_default_models)
    ttft_ms: float = 0.0  # time to first token
    itl_ms: float = 0.0  # inter-token latency
    max_tokens: int = 16  # completion length when the request sets no max_tokens (finish "stop")
    embedding_dim: int = 8
    max_model_len: int = 2048
    kv_cache_tokens: int = 65536  # capacity behind vllm:kv_cache_usage_perc
    fail_rate: float = 0.0  # fraction of requests answered with fail_status (every 1/rate-th)
    fail_status: int = 500

    def __post_init__(self) -> None:
        if not self.models or not all(self.models):
            raise ValueError("models: at least one non-empty model name is required")
        if not (0 <= self.ttft_ms < math.inf and 0 <= self.itl_ms < math.inf):  # (NaN too)
            raise ValueError("ttft_ms and itl_ms must be >= 0 (and finite)")
        if self.max_tokens < 1 or self.embedding_dim < 1:
            raise ValueError("max_tokens and embedding_dim must be >= 1")
        if self.max_model_len < 2 or self.kv_cache_tokens < 1:
            raise ValueError("max_model_len must be >= 2 and kv_cache_tokens >= 1")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")

    @property
    def model_name(self) -> str:
        """The `model_name` label of /metrics (vLLM uses its first served name)."""
        return self.models[0]
