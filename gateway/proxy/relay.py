"""The proxied response: forward one request to an engine and relay its answer to the client.

It is an ASGI response so that it can watch the client's connection while it works: a
disconnect at any stage (waiting for headers, for the first token, mid-stream, or for a
non-streaming body) cancels the work, which closes the upstream connection, which makes vLLM
abort the request and free its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.auth.principal import ANONYMOUS, Principal
from gateway.errors import ApiError
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import Admission
from gateway.metrics import Metrics
from gateway.proxy.asgi_send import send_bytes, send_error
from gateway.proxy.normalize import normalize_error, normalize_success, usage_tokens
from gateway.proxy.stream import relay_stream
from gateway.proxy.upstream import Upstream
from gateway.request_context import RequestInfo, info_of
from gateway.routing.balancer import Balancer
from gateway.routing.engines import Engine, ModelPool

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; only in metrics and logs


@dataclass(frozen=True, slots=True)
class ProxyCall:
    route: str  # "chat/completions", as under /v1/
    pool: ModelPool
    body: bytes
    stream: bool
    caller: Principal = ANONYMOUS
    admission: Admission | None = None  # charged limits, settled when the answer is done


@dataclass(frozen=True, slots=True)
class ProxyDeps:
    upstream: Upstream
    balancer: Balancer
    metrics: Metrics
    admission: AdmissionControl


class ProxyResponse(Response):
    def __init__(self, deps: ProxyDeps, call: ProxyCall) -> None:
        # Response.__init__ would render a body; this response writes its own.
        self.deps = deps
        self.call = call
        self.background = None
        self.status_code = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = info_of(scope)
        info.model = self.call.pool.name
        started = time.perf_counter()
        admission = self.call.admission
        if admission is not None:
            send = _with_headers(send, admission.headers())
        work = asyncio.ensure_future(self._forward(info, send))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
                info.outcome = "client_disconnected"
                self.status_code = CLIENT_CLOSED
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            except Exception:
                self.status_code = 500  # the middleware answers it and logs the traceback
                raise
            finally:
                self._observe(time.perf_counter() - started)
                if admission is not None:
                    used = self._used_tokens(info)
                    settle = self.deps.admission.settle(self.call.caller, admission, used)
                    await asyncio.shield(settle)

    def _used_tokens(self, info: RequestInfo) -> int | None:
        """What to charge: the engine's report; nothing if no engine ever answered; else keep
        the reservation (a disconnect or a stream without usage)."""
        if info.usage_tokens is not None:
            return info.usage_tokens
        if info.engine is None or info.outcome in ("engine_error", "engine_unavailable"):
            return 0
        return None

    def _observe(self, elapsed: float) -> None:
        metrics, model, route = self.deps.metrics, self.call.pool.name, self.call.route
        metrics.requests.labels(model, route, str(self.status_code)).inc()
        metrics.duration.labels(model, route).observe(elapsed)

    async def _forward(self, info: RequestInfo, send: Send) -> None:
        call, deps = self.call, self.deps
        headers = {"content-type": "application/json", "x-request-id": info.request_id}
        try:
            engine, resp = await deps.upstream.open(
                deps.balancer.candidates(call.pool),
                "/v1/" + call.route,
                call.body,
                headers,
                call.stream,
            )
        except ApiError as err:
            info.outcome = "engine_unavailable" if err.status_code == 503 else "engine_error"
            await self._send_error(send, err)
            return
        info.engine = engine.url
        engine.inflight += 1
        gauge = deps.metrics.inflight.labels(engine.url)
        gauge.inc()
        try:
            await self._answer(info, engine, resp, send)
            resp.release()
        finally:
            resp.close()
            engine.inflight -= 1
            gauge.dec()

    async def _answer(
        self, info: RequestInfo, engine: Engine, resp: aiohttp.ClientResponse, send: Send
    ) -> None:
        if resp.status == 200 and self.call.stream and resp.content_type == "text/event-stream":
            self.status_code = 200
            outcome = await relay_stream(
                resp, send, self.deps, engine, info, track_usage=self.call.admission is not None
            )
            info.outcome = outcome
            return
        try:
            body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "disconnect"
            info.outcome = "timeout" if kind == "timeout" else "engine_error"
            await self._send_error(send, self.deps.upstream.failure(engine, kind, exc))
            return
        self.status_code = resp.status
        if resp.status == 200:
            if self.call.admission is not None:
                info.usage_tokens = usage_tokens(body)
            await send_bytes(send, 200, normalize_success(body))
            return
        info.outcome = "engine_error"
        self.deps.metrics.upstream_errors.labels(engine.url, f"http_{resp.status}").inc()
        await send_bytes(send, resp.status, normalize_error(resp.status, body, self.call.route))

    async def _send_error(self, send: Send, err: ApiError) -> None:
        self.status_code = err.status_code
        await send_error(send, err)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return sending


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
