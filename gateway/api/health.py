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
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.authenticate import bearer
from gateway.deps import Gateway
from gateway.errors import Unauthorized
from gateway.redis_client import redis_error
from gateway.settings import Settings
from gateway.state import GatewayState

router = APIRouter()
# Written by /readyz's detail, to tell whether Redis takes writes; gone a second later.
PROBE_KEY = "llmaas:readyz:probe"


@router.get("/healthz", response_model=None)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", response_model=None)
async def readyz(request: Request, gw: Gateway) -> Response:
    """Ready until it drains (after SIGTERM). What every replica shares does not make it unready:
    with Redis down (limits in closed mode) or no engine of any model up, readiness would take
    every replica out of its Service at once, and clients would get the load balancer's error
    page instead of the gateway's 503 (OpenAI's shape, `Retry-After`, the reason) that their
    SDK retries. The detail (Redis, each model and engine, by the registry's health checks and
    ejections; nothing is probed but Redis) says what is down, to token holders only. Redis
    is probed with a write: one that answers PING but refuses writes (maxmemory reached, too
    few replicas, a read-only replica) refuses every limited request and every settlement."""
    status = "draining" if gw.drain.draining else "ready"
    body: dict[str, Any] = {"status": status}
    if ops_token_given(request, gw.settings):
        now = time.monotonic()
        pools = gw.registry.pools()
        models = {p.name: any(e.is_up(now) and e.lists(p.name) for e in p.engines) for p in pools}
        engines = {e.url: e.is_up(now) for e in gw.registry.engines()}
        body.update(await _redis_state(gw))
        body.update(models=models, engines=engines)
    code = 200 if status == "ready" else 503
    return Response(orjson.dumps(body), status_code=code, media_type="application/json")


async def _redis_state(gw: GatewayState) -> dict[str, str]:
    """`redis`: not_configured, unreachable, refusing_writes (with `redis_error`, Redis's own
    words: OOM, NOREPLICAS, READONLY) or ok."""
    if gw.redis is None:
        return {"redis": "not_configured"}
    try:
        async with asyncio.timeout(1):
            await gw.redis.set(PROBE_KEY, b"1", px=1000)
    except ResponseError as exc:  # it answers: with an error
        return {"redis": "refusing_writes", "redis_error": redis_error(exc)}
    except Exception:  # any other failure means "not reachable" here; the kind is logged elsewhere
        return {"redis": "unreachable"}
    return {"redis": "ok"}


@router.get("/metrics", response_model=None)
async def metrics(request: Request, gw: Gateway) -> Response:
    if not ops_token_given(request, gw.settings):
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <metrics or admin token>'.",
            code="invalid_api_key",
        )
    text = gw.metrics.render(engines=[e.url for e in gw.registry.engines()])
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def ops_token_given(request: Request, settings: Settings) -> bool:
    """Whether the request carries the admin or the metrics token (compared in constant time;
    both are checked, so the time does not tell which one was close)."""
    try:
        token = bearer(request.headers)
    except Unauthorized:  # two Authorization headers: neither counts
        return False
    given = (token or "").encode()
    expected = (settings.admin_token, settings.metrics_token)
    matches = [hmac.compare_digest(given, t.encode()) for t in expected if t]
    return token is not None and any(matches)
