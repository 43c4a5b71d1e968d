"""Liveness, readiness and Prometheus metrics.

These share the public port, so what could map the deployment (engine URLs, model and tenant
names in metric labels) is only given to a caller with the admin or the metrics token; the
probes get the bare status.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.deps import Gateway
from gateway.errors import Unauthorized
from gateway.settings import Settings
from gateway.state import GatewayState

router = APIRouter()


@router.get("/healthz", response_model=None)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", response_model=None)
async def readyz(request: Request, gw: Gateway) -> Response:
    """Ready when this gateway can serve: some model has an engine that is up (by the registry's
    health checks and ejections; nothing is probed here) and Redis answers, unless
    `limits.failure_mode` is open (then requests are served without it). A model whose engines
    are all down is named in the detail but does not take the gateway out of its Service: every
    replica would go with it, and the models that are up with them. Draining (after SIGTERM) is
    never ready. The detail (redis, models, engines) is for token holders only."""
    now = time.monotonic()
    models = {p.name: any(e.is_up(now) for e in p.engines) for p in gw.registry.pools()}
    redis = await _redis_state(gw)
    redis_ok = redis in ("ok", "not_configured") or gw.settings.limits.failure_mode == "open"
    ready = redis_ok and (any(models.values()) or not models)
    status = "draining" if gw.drain.draining else "ready" if ready else "not_ready"
    body: dict[str, Any] = {"status": status}
    if ops_token_given(request, gw.settings):
        engines = {e.url: e.is_up(now) for e in gw.registry.engines()}
        body.update(redis=redis, models=models, engines=engines)
    code = 200 if status == "ready" else 503
    return Response(orjson.dumps(body), status_code=code, media_type="application/json")


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
async def metrics(request: Request, gw: Gateway) -> Response:
    if not ops_token_given(request, gw.settings):
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <metrics or admin token>'.",
            code="invalid_api_key",
        )
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def ops_token_given(request: Request, settings: Settings) -> bool:
    """Whether the request carries the admin or the metrics token (compared in constant time;
    both are checked, so the time does not tell which one was close)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    expected = (settings.admin_token, settings.metrics_token)
    matches = [hmac.compare_digest(given, t.encode()) for t in expected if t]
    return scheme.lower() == "bearer" and any(matches)
