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
its declared length from the start, for the request's life (its bytes are kept for a
failover); a body without one (chunked) counts what has come of it, as it comes, and is not
refused itself. One alone always passes. Uploads (/v1/files), streamed to disk, count none.
A compressed body counts what it decodes to as well, once decoded (`charge_decoded`): counted
at its wire size alone, 16 gzip bodies of 16 KB decoding to 16 MiB each took a gateway past
1 GiB.

Two ints per process on the hot path, touched only by the event loop's thread: no lock.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ServiceUnavailable
from gateway.proxy.asgi_send import send_error

BOUNDED_PREFIX = "/v1/"


UNWEIGHED_PREFIX = "/v1/files"  # uploads go to disk as they come
_BOUND = "llmaas.bodies"  # scope["state"]: the bound, for charge_decoded
_DECODED = "llmaas.decoded"  # scope["state"]: the bytes charge_decoded added


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
        if weight > 0 and self.holding and self.holding + weight > self.body_bytes:
            _count(scope)
            await send_error(send, _busy_with_bodies())
            return
        self.inflight += 1
        counted = _Counted(self, receive) if weight < 0 else None
        weight = max(weight, 0)
        self.holding += weight
        state = scope.setdefault("state", {})
        state[_BOUND] = self
        try:
            await self.app(scope, receive if counted is None else counted, send)
        finally:
            self.inflight -= 1
            decoded = state.get(_DECODED, 0)
            self.holding -= weight + decoded + (0 if counted is None else counted.received)

    def _weight(self, scope: Scope) -> int:
        """The body's bytes as declared (at most max_body_bytes); -1 for a body with no
        length (chunked), counted as it comes; 0 for none."""
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                return min(int(value), self.max_body_bytes) if value.isdigit() else -1
        return -1


class _Counted:
    """A request's `receive`, its body's bytes counted into the bound's as they come."""

    __slots__ = ("bound", "receive", "received")

    def __init__(self, bound: InflightBound, receive: Receive) -> None:
        self.bound = bound
        self.receive = receive
        self.received = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        size = len(message.get("body", b""))
        if size:
            self.received += size
            self.bound.holding += size
        return message


def charge_decoded(scope: Scope, wire: int, decoded: int) -> None:
    """A compressed body of `wire` bytes decoded to `decoded`: what it grew by counts in the
    bound too, for the request's life; 503 gateway_busy past it (unless this request's are the
    only bytes held: its wire bytes, declared or counted as they came)."""
    state = scope.get("state", {})
    bound: InflightBound | None = state.get(_BOUND)
    more = decoded - wire
    if bound is None or more <= 0:
        return
    held = state.get(_DECODED, 0)
    own = wire + held
    if bound.holding + more > bound.body_bytes and bound.holding > own:
        _count(scope)
        raise _busy_with_bodies()
    bound.holding += more
    state[_DECODED] = held + more


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
