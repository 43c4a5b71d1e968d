"""An in-memory engine behind the proxy's UpstreamClient protocol, and an ASGI harness that runs
one ProxyResponse against it: the relay's logic without sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Message

from gateway.errors import ApiError
from gateway.metrics import Metrics
from gateway.proxy.call import ProxyCall
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.outcome import ProxyResult
from gateway.proxy.relay import ProxyResponse
from gateway.proxy.upstream import Reload, Upstream
from gateway.proxy.upstream_answers import UpstreamBroken
from gateway.request_context import RequestInfo, attach
from gateway.routing.balancer import RoundRobin
from gateway.routing.engines import Engine, ModelPool
from gateway.settings import UpstreamSettings

Step = bytes | BaseException | float  # a chunk, a failure to raise, or a pause in seconds


@dataclass
class FakeResponse:
    status: int = 200
    content_type: str = "text/event-stream"
    steps: list[Step] = field(default_factory=list)
    closed: bool = False
    released: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for step in self.steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                yield step

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def received(self) -> bytes:
        return b""  # (chunks() hands each step on as it comes: nothing waits unread)

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class FakeUpstream:
    """Answers every request with the next scripted response; errors map like the real one's."""

    def __init__(self, *responses: FakeResponse | ApiError) -> None:
        self.responses = list(responses)
        self.bodies: list[bytes] = []
        self.requests: list[tuple[str, str, str]] = []  # method, path, engine URL
        self._real = Upstream(UpstreamSettings(), Metrics())
        self.failure = self._real.failure  # errors map as the real one's (its signature too)

    async def open(
        self,
        engines: list[Engine],
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
        *,
        trying: Callable[[Engine | None], None] = lambda _: None,
        method: str = "POST",
        reload: Reload | None = None,
    ) -> tuple[Engine, FakeResponse]:
        self.bodies.append(body)
        self.requests.append((method, path, engines[0].url))
        answer = self.responses.pop(0)
        if isinstance(answer, ApiError):
            trying(None)
            raise answer
        engine = engines[0]
        trying(engine)
        engine.inflight += 1
        return engine, answer


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def broken() -> UpstreamBroken:
    return UpstreamBroken("stream_cut", ConnectionResetError())


@dataclass
class Run:
    messages: list[Message]
    result: ProxyResult
    engine: Engine

    @property
    def status(self) -> int:
        return int(next(m for m in self.messages if m["type"] == "http.response.start")["status"])

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )


async def run_proxy(
    upstream: FakeUpstream, call: Callable[[ModelPool], ProxyCall], *, leave_after_s: float = 0
) -> Run:
    """Run one ProxyResponse; with `leave_after_s` the client disconnects after that long.
    Like uvicorn, `receive` says http.disconnect once the response's last message was sent."""
    engine = Engine("http://engine")
    pool = ModelPool("m", [engine])
    results: list[ProxyResult] = []

    async def report(result: ProxyResult) -> None:
        results.append(result)

    messages: list[Message] = []
    answered = asyncio.Event()

    async def send(message: Message) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    async def receive() -> Message:
        if leave_after_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), leave_after_s)
            return {"type": "http.disconnect"}
        await answered.wait()
        return {"type": "http.disconnect"}

    scope: dict[str, Any] = {"type": "http"}
    attach(scope, RequestInfo("rid-1"))
    deps = ProxyDeps(upstream, RoundRobin(), Metrics())
    await ProxyResponse(deps, call(pool), report)(scope, receive, send)
    assert len(results) == 1, results
    return Run(messages, results[0], engine)
