"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import Gateway
from gateway.state import GatewayState

router = APIRouter()


@router.get("/healthz", response_model=None)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", response_model=None)
async def readyz(gw: Gateway) -> Response:
    """Ready when this gateway can serve: some model has an engine that is up (by the registry's
    health checks and ejections; nothing is probed here) and Redis answers, unless
    `limits.failure_mode` is open (then requests are served without it). A model whose engines
    are all down is named in the body but does not take the gateway out of its Service: every
    replica would go with it, and the models that are up with them."""
    now = time.monotonic()
    engines = gw.registry.engines()
    models = {p.name: any(e.is_up(now) for e in p.engines) for p in gw.registry.pools()}
    redis = await _redis_state(gw)
    redis_ok = redis in ("ok", "not_configured") or gw.settings.limits.failure_mode == "open"
    ready = redis_ok and (any(models.values()) or not models)
    body = {
        "status": "ready" if ready else "not_ready",
        "redis": redis,
        "models": models,
        "engines": {e.url: e.is_up(now) for e in engines},
    }
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


async def _redis_state(gw: GatewayState) -> str:
    if gw.redis is None:
        return "not_configured"
    try:
        async with asyncio.timeout(1):
            await gw.redis.ping()
    except Exception:  # any failure means "not reachable" here; the kind is logged elsewhere
        return "unreachable"
    return "ok"


@router.get("/metrics", response_model=None)
async def metrics(gw: Gateway) -> Response:
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
