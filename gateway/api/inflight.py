"""The process's own bound on concurrent /v1 requests (`max_inflight_requests`).

upstream.max_connections counts requests once they are sent to an engine; a request reading
its body, waiting for authentication or for admission in Redis holds memory (up to
max_body_bytes) and a task without being counted there. Past the bound a request is answered
503 gateway_busy with Retry-After at once, never queued: a queue here would only move the
overload into this process. Health, metrics and admin paths are not bounded, so that probes
and operators still get through a saturated gateway.

One int per process on the hot path, touched only by the event loop's thread: no lock.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.proxy.asgi_send import send_error

BOUNDED_PREFIX = "/v1/"


class InflightBound:
    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(BOUNDED_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            _count(scope)
            await send_error(send, _busy())
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _count(scope: Scope) -> None:
    """In llmaas_gateway_busy, once the app's state (built in its lifespan) is there."""
    gateway = getattr(scope["app"].state, "gateway", None)
    if gateway is not None:
        gateway.metrics.gateway_busy.inc()


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway is at its limit of requests in flight; try again shortly.",
        code="gateway_busy",
        headers={"retry-after": "1"},
    )
