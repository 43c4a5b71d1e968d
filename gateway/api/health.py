"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import Gateway
from gateway.routing.engines import Engine
from gateway.state import GatewayState

router = APIRouter()

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)


@router.get("/healthz", response_model=None)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", response_model=None)
async def readyz(gw: Gateway) -> Response:
    """Ready when Redis (if configured) answers and every model has an engine that is healthy."""
    engines = gw.registry.engines()
    results = await asyncio.gather(*(_engine_ok(gw, e) for e in engines))
    healthy = {e.url for e, ok in zip(engines, results, strict=True) if ok}
    models = {p.name: any(e.url in healthy for e in p.engines) for p in gw.registry.pools()}
    redis = await _redis_state(gw)
    ready = all(models.values()) and redis in ("ok", "not_configured")
    body = {
        "status": "ready" if ready else "not_ready",
        "redis": redis,
        "models": models,
        "engines": {e.url: e.url in healthy for e in engines},
    }
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


async def _engine_ok(gw: GatewayState, engine: Engine) -> bool:
    try:
        async with gw.http.get(engine.url + "/health", timeout=_PROBE_TIMEOUT) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


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
