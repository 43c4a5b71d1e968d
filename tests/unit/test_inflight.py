"""The gateway's own bound on concurrent /v1 requests, as an ASGI middleware on its own."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.api.inflight import InflightBound, charge_decoded
from gateway.errors import ServiceUnavailable


class App:
    """Holds chat requests until released; raises for a path that asks it to."""

    def __init__(self, hold: int = 0) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()  # set once `hold` requests are held
        self.hold = hold
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.served += 1
        if scope["path"].endswith("/boom"):
            raise RuntimeError("boom")
        if scope["path"].startswith("/v1/chat"):
            self.hold -= 1
            if self.hold == 0:
                self.holding.set()
            await self.release.wait()


class NoState:
    state = object()  # before the lifespan built the gateway's state: nothing to count in


def http(
    path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "path": path,
        "method": method,
        "headers": [(b"content-length", b"2")] if headers is None else headers,
        "app": NoState(),
    }


def bounded(app: App, limit: int, body_bytes: int = 1 << 30) -> InflightBound:
    return InflightBound(app, limit=limit, body_bytes=body_bytes, max_body_bytes=1 << 20)


async def call(
    bound: InflightBound,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "POST",
) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await bound(http(path, method, headers), receive, send)
    return sent


async def test_past_the_bound_a_request_is_refused_at_once_and_never_queued() -> None:
    app = App(hold=2)
    bound = bounded(app, limit=2)
    held = [asyncio.create_task(call(bound, "/v1/chat/completions")) for _ in range(2)]
    await asyncio.wait_for(app.holding.wait(), 10)
    assert bound.inflight == 2
    refused = await call(bound, "/v1/chat/completions")
    start, body = refused
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert orjson.loads(body["body"])["error"]["code"] == "gateway_busy"
    assert app.served == 2
    assert await call(bound, "/readyz") == []  # not bounded: it reached the app
    assert app.served == 3
    app.release.set()
    await asyncio.gather(*held)
    assert bound.inflight == 0


async def test_a_request_that_fails_gives_its_place_back() -> None:
    app = App()
    bound = bounded(app, limit=1)
    with pytest.raises(RuntimeError):
        await call(bound, "/v1/boom")
    assert bound.inflight == 0
    assert await call(bound, "/v1/models") == []  # its place was free
    assert app.served == 2


async def test_bodies_past_their_bytes_are_refused_and_one_alone_always_passes() -> None:
    """7 requests of 14 MiB took a gateway past its pod's 1 GiB (each holds 5-10 times its
    body as it is parsed): the bodies in flight have a bound of their own, each by its
    declared length; a body without one counts what has come, as it comes."""
    app = App(hold=2)
    bound = bounded(app, limit=100, body_bytes=1000)
    big = [(b"content-length", b"600")]
    first = asyncio.create_task(call(bound, "/v1/chat/completions", big))
    second = asyncio.create_task(call(bound, "/v1/chat/completions", [(b"content-length", b"300")]))
    await asyncio.wait_for(app.holding.wait(), 10)
    assert bound.holding == 900
    start, body = await call(bound, "/v1/embeddings", big)
    assert start["status"] == 503
    assert orjson.loads(body["body"])["error"]["code"] == "gateway_busy"
    gzip = [(b"content-length", b"10"), (b"content-encoding", b"gzip")]  # its 10 bytes
    assert await call(bound, "/v1/embeddings", gzip) == []
    chunked = [(b"transfer-encoding", b"chunked")]  # not refused: counted as it comes
    assert await call(bound, "/v1/embeddings", chunked) == []
    assert await call(bound, "/v1/files", [(b"content-length", b"99999")]) == []  # to disk
    assert await call(bound, "/v1/models", [], "GET") == []  # no body
    app.release.set()
    await asyncio.gather(first, second)
    assert bound.holding == 0
    app.release.clear()
    app.hold, app.holding = 1, asyncio.Event()
    alone = asyncio.create_task(call(bound, "/v1/chat/completions", [(b"content-length", b"5000")]))
    await asyncio.wait_for(app.holding.wait(), 10)  # past the bound, but alone: served
    assert bound.holding == 5000
    app.release.set()
    await alone
    assert bound.holding == 0


async def test_a_body_without_a_length_counts_what_has_come() -> None:
    received: list[int] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(3):
            await receive()
            received.append(bound.holding)

    bound = InflightBound(reader, limit=10, body_bytes=1000, max_body_bytes=1 << 20)
    parts = iter([b"x" * 100, b"y" * 200, b""])

    async def receive() -> Message:
        return {"type": "http.request", "body": next(parts), "more_body": True}

    async def send(message: Message) -> None:
        pass

    scope = http("/v1/chat/completions", "POST", [(b"transfer-encoding", b"chunked")])
    await bound(scope, receive, send)
    assert received == [100, 300, 300]
    assert bound.holding == 0


def _decoding(bound: InflightBound) -> dict[str, Any]:
    """The scope of a request whose body is being decoded, `bound` its in-flight bound."""
    app = SimpleNamespace(state=SimpleNamespace())
    state = {"llmaas.bodies": bound}
    return {"state": state, "headers": [], "method": "POST", "path": "/v1/x", "app": app}


def test_a_decoded_body_alone_passes_and_counts() -> None:
    # (a chunked body, its 30 bytes counted as they came, was refused alone: its own bytes were
    # taken for another request's)
    bound = InflightBound(App(), limit=10, body_bytes=100, max_body_bytes=1000)
    bound.holding = 30
    scope = _decoding(bound)
    charge_decoded(scope, 30, 500)
    assert bound.holding == 500
    assert scope["state"]["llmaas.decoded"] == 470


def test_a_decoded_body_past_the_bound_beside_others_is_refused() -> None:
    bound = InflightBound(App(), limit=10, body_bytes=100, max_body_bytes=1000)
    bound.holding = 30 + 50  # its own 30 and another request's 50
    with pytest.raises(ServiceUnavailable):
        charge_decoded(_decoding(bound), 30, 500)
    assert bound.holding == 80  # nothing charged
