"""The gateway's own bound on concurrent /v1 requests, as an ASGI middleware on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.api.inflight import InflightBound


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


def http(path: str) -> dict[str, Any]:
    return {"type": "http", "path": path, "app": NoState()}


async def call(bound: InflightBound, path: str) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await bound(http(path), receive, send)
    return sent


async def test_past_the_bound_a_request_is_refused_at_once_and_never_queued() -> None:
    app = App(hold=2)
    bound = InflightBound(app, limit=2)
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
    bound = InflightBound(app, limit=1)
    with pytest.raises(RuntimeError):
        await call(bound, "/v1/boom")
    assert bound.inflight == 0
    assert await call(bound, "/v1/models") == []  # its place was free
    assert app.served == 2
