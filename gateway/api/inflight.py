"""The process's own bound on concurrent /v1 requests (`max_inflight_requests`).

upstream.max_connections counts requests once they are sent to an engine; a request reading
its body, waiting for authentication or for admission in Redis holds memory (up to
max_body_bytes) and a task without being counted there. Past the bound a request is answered
503 gateway_busy with Retry-After at once, never queued: a queue here would only move the
overload into this process. Health, metrics and admin paths are not bounded, so that probes
and operators still get through a saturated gateway.

Beside the count, the bytes of their bodies (`max_inflight_body_bytes`): a request holds about
5-10 times its body while it is read, parsed and sent on, so 7 requests of 14 MiB took a
gateway past 1 GiB (the chart's memory limit: killed, with every stream on it). A body counts
its declared length from the start (the most, max_body_bytes, without one, or compressed);
one alone always passes. Uploads (/v1/files), streamed to disk, count none.

Two ints per process on the hot path, touched only by the event loop's thread: no lock.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.proxy.asgi_send import send_error

BOUNDED_PREFIX = "/v1/"


UNWEIGHED_PREFIX = "/v1/files"  # uploads go to disk as they come


class InflightBound:
    def __init__(self, app: ASGIApp, *, limit: int, body_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0
        self.body_bytes = body_bytes  # the bodies' bound
        self.max_body_bytes = max_body_bytes
        self.holding = 0  # bytes of the bodies of the requests in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (path := scope["path"]).startswith(BOUNDED_PREFIX):
            await self.app(scope, receive, send)
            return
        weight = 0 if path.startswith(UNWEIGHED_PREFIX) else self._weight(scope)
        if self.inflight >= self.limit:
            _count(scope)
            await send_error(send, _busy())
            return
        if weight and self.holding and self.holding + weight > self.body_bytes:
            _count(scope)
            await send_error(send, _busy_with_bodies())
            return
        self.inflight += 1
        self.holding += weight
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            self.holding -= weight

    def _weight(self, scope: Scope) -> int:
        """The body's bytes as declared; the most a body may be without a length (chunked),
        or compressed (it decodes to up to that)."""
        if scope["method"] in ("GET", "HEAD", "DELETE"):
            return 0
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding" and value.strip().lower() != b"identity":
                return self.max_body_bytes
        if length is None or not length.isdigit():
            return self.max_body_bytes
        return min(int(length), self.max_body_bytes)


def _count(scope: Scope) -> None:
    """In llmaas_gateway_busy, once the app's state (built in its lifespan) is there."""
    gateway = getattr(scope["app"].state, "gateway", None)
    if gateway is not None:
        gateway.metrics.gateway_busy.inc()


def _busy_with_bodies() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway holds its limit of request bodies in memory; try again shortly.",
        code="gateway_busy",
        headers={"retry-after": "1"},
    )


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway is at its limit of requests in flight; try again shortly.",
        code="gateway_busy",
        headers={"retry-after": "1"},
    )
