"""Draining: once the process is asked to stop, readiness goes false and new requests are
refused, while the requests already let in finish (the server waits for them up to the grace).

The server (gateway/server.py) flips the flag from its signal handler, and cuts what is still
in flight when the grace is over; this module keeps the flag, the count of requests in flight
and the cuts of the proxied ones, and guards the door.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.proxy.asgi_send import send_error
from gateway.proxy.cut import Cut

# Still answered while draining: the probes must see "draining", Prometheus its last scrape.
_ALWAYS_SERVED = ("/healthz", "/readyz", "/metrics")
# What a refused client is told: another replica answers by then (the Service has dropped us).
RETRY_AFTER_S = 1


class Drain:
    """Whether this process is draining, and how many requests it is still serving."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.cuts: set[Cut] = set()  # of the proxied requests in flight (the same ProxyDeps.cuts)

    def begin(self) -> None:
        self.draining = True

    def cut(self) -> int:
        """The grace is over: every proxied request in flight ends now, answered (a 503, or
        its stream's error frame and `[DONE]`), and is billed `gateway_shutdown`. How many."""
        cuts = list(self.cuts)
        for cut in cuts:
            cut.shutdown()
        return len(cuts)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0


class DrainGuard:
    """Refuses new requests with a 503 once draining (Connection: close, so a kept-alive client
    reconnects, and is routed elsewhere); counts the ones it lets through until they end, which
    for a stream is after its last byte."""

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _ALWAYS_SERVED:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await send_error(send, draining_error())
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


def draining_error() -> ServiceUnavailable:
    return ServiceUnavailable(
        "This gateway is shutting down and takes no new requests; retry shortly.",
        code="gateway_draining",
        headers={"retry-after": str(RETRY_AFTER_S), "connection": "close"},
    )
