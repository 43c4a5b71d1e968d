"""vLLM's answer once its engine core process died (the OOM killer, a crash): "EngineCore
encountered an issue. See stack trace (above) for the root cause." A stack trace the client
cannot see, and no Retry-After, for what is the gateway's 503 while the engine is replaced:
answered so before a stream starts (relay.py) and in a stream's error frame (stream.py)."""

from __future__ import annotations

from gateway.errors import ApiError, ServiceUnavailable

ENGINE_DEAD = b"EngineCore encountered an issue"


def engine_dead() -> ApiError:
    return ServiceUnavailable(
        "The model's engine stopped working (its engine core exited) and cannot answer until it "
        "is restarted; try again shortly.",
        code="engine_unavailable",
        headers={"retry-after": "1"},
    )
