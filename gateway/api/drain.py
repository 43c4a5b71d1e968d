"""Draining: once the process is asked to stop, readiness goes false and new requests are
refused, while the requests already let in finish (the server waits for them up to the grace).

The server (draining_server.py) flips the flag from its signal handler, and cuts what is still
in flight when the grace is over; this module keeps the flag, the count of requests in flight
and the cuts of the proxied ones, and guards the door.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.proxy.asgi_send import send_error
from gateway.proxy.cut import Cut, shutdown_error
from gateway.proxy.outcome import Outcome
from gateway.request_context import info_of

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
        # The task of every request in flight (DrainGuard's), proxied or not; those cut at the
        # grace's end by the drain itself, not by their proxied Cut (still reading a body, an
        # upload, a download...).
        self.tasks: set[asyncio.Task[object]] = set()
        self.shut: set[asyncio.Task[object]] = set()
        self.hurried = False  # a signal once stopping (a second Ctrl-C): shut down at once
        self.on_hurry: list[Callable[[], None]] = []  # told so (the usage flush)

    def begin(self) -> None:
        self.draining = True

    def hurry(self) -> None:
        self.hurried = True
        for told in self.on_hurry:
            told()

    def cut(self) -> int:
        """The grace is over: every proxied request in flight ends now, answered (a 503, or
        its stream's error frame and `[DONE]`), and is billed `gateway_shutdown`. How many."""
        cuts = list(self.cuts)
        for cut in cuts:
            cut.shutdown()
        proxied = {cut.task for cut in cuts}
        for task in self.tasks - proxied:  # not proxied (yet): DrainGuard answers it
            self.shut.add(task)
            task.cancel()
        return len(self.tasks | proxied)

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
        drain = self.drain
        task = asyncio.current_task()
        assert task is not None
        drain.in_flight += 1
        drain.tasks.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if task not in drain.shut or task.uncancel() > 0:  # (someone else's cancel too)
                raise
            await _shut(scope, send)  # cut at the grace's end before it was proxied
        finally:
            drain.in_flight -= 1
            drain.tasks.discard(task)
            drain.shut.discard(task)


async def _shut(scope: Scope, send: Send) -> None:
    """A request the grace's end cut before it reached an engine (still reading its body, an
    upload): answered 503 `gateway_shutdown`, as a proxied one is; uvicorn cancelled it later
    and answered its own plain-text 500. One whose answer had begun (a download) just ends."""
    info = info_of(scope)
    info.outcome = Outcome.GATEWAY_SHUTDOWN
    if info.status == 0:
        await send_error(send, shutdown_error())


def draining_error() -> ServiceUnavailable:
    return ServiceUnavailable(
        "This gateway is shutting down and takes no new requests; retry shortly.",
        code="gateway_draining",
        headers={"retry-after": str(RETRY_AFTER_S), "connection": "close"},
    )
