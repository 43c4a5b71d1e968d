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
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.auth.principal import ANONYMOUS, Principal
from gateway.errors import ApiError
from gateway.limits.limiter import Admission
from gateway.metering.record import UsageRecord, new_record_id
from gateway.metering.settlement import LimitSettlement, Settlement
from gateway.metering.settler import Settler
from gateway.metering.stream_options import UsageWanted
from gateway.metering.usage import Usage, usage_of
from gateway.metrics import Metrics
from gateway.proxy.asgi_send import send_bytes, send_error
from gateway.proxy.collect import collect_stream
from gateway.proxy.normalize import normalize_error, normalize_success
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
    received_ms: int = 0  # when the request arrived, Unix ms (the usage record's time)
    n: int = 1  # choices per prompt (to add up a cut stream's usage)
    # For streams: the usage the client asked for (the engine is always asked for all of it).
    usage_wanted: UsageWanted | None = None
    # For a non-streaming request asked of the engine as a stream: the parsed request body
    # (what the assembled answer depends on). None: the engine answers with one body.
    collect: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProxyDeps:
    upstream: Upstream
    balancer: Balancer
    metrics: Metrics
    settler: Settler


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
        except asyncio.CancelledError:
            info.outcome = "gateway_shutdown"  # uvicorn cancels what outlives its grace period
            raise
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
                if info.outcome != "gateway_shutdown":
                    info.outcome = "client_disconnected"
                self.status_code = CLIENT_CLOSED
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            except Exception:
                self.status_code = 500  # the middleware answers it and logs the traceback
                raise
            finally:
                elapsed = time.perf_counter() - started
                self._observe(elapsed)
                settlement = self._settlement(info, elapsed)
                if settlement is not None:
                    await asyncio.shield(self.deps.settler.settle(settlement))

    def _settlement(self, info: RequestInfo, elapsed: float) -> Settlement | None:
        """The usage record (if an engine was reached) and the limits to reconcile (if any)."""
        call, admission = self.call, self.call.admission
        reached = info.engine is not None
        if not reached and admission is None:
            return None
        usage = info.usage or Usage()
        record_id = new_record_id()
        record = None
        if reached:
            record = UsageRecord(
                id=record_id,
                request_id=info.request_id,
                time_ms=call.received_ms,
                tenant=call.caller.tenant,
                key_id=call.caller.key_id,
                model=call.pool.name,
                route=call.route,
                engine=info.engine or "",
                stream=call.stream,
                outcome=info.outcome,
                status=self.status_code,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                latency_ms=round(elapsed * 1000, 3),
                ttft_ms=None if info.ttft_ms is None else round(info.ttft_ms, 3),
            )
        limits = None
        if admission is not None:
            used = self._used_tokens(info, admission)
            limits = LimitSettlement(
                lease=admission.lease,
                delta=used - admission.reserved_tokens,
                key_tpm=call.caller.key_limits.tpm or 0,
                tenant_tpm=call.caller.tenant_limits.tpm or 0,
            )
        return Settlement(record_id, call.caller.tenant, call.caller.key_id, record, limits)

    def _used_tokens(self, info: RequestInfo, admission: Admission) -> int:
        """What to charge the token limits: the engine's report; nothing if no engine answered
        or it refused; else (cut short before any report) the reservation."""
        if info.usage is not None:
            return info.usage.total_tokens
        if info.engine is None or info.outcome in ("engine_error", "rejected", "timeout"):
            return 0
        return admission.reserved_tokens

    def _observe(self, elapsed: float) -> None:
        metrics, model, route = self.deps.metrics, self.call.pool.name, self.call.route
        metrics.requests.labels(model, route, str(self.status_code)).inc()
        metrics.duration.labels(model, route).observe(elapsed)

    async def _forward(self, info: RequestInfo, send: Send) -> None:
        call, deps = self.call, self.deps
        headers = {"content-type": "application/json", "x-request-id": info.request_id}

        def trying(engine: Engine | None) -> None:
            info.engine = None if engine is None else engine.url

        try:
            engine, resp = await deps.upstream.open(
                deps.balancer.candidates(call.pool),
                "/v1/" + call.route,
                call.body,
                headers,
                call.stream,
                trying=trying,
            )
        except ApiError as err:
            if info.engine is None:
                info.outcome = "engine_unavailable"
            else:
                info.outcome = "timeout" if err.status_code == 504 else "engine_error"
            await self._send_error(send, err)
            return
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
        if resp.status == 200 and self.call.stream and _is_sse(resp):
            self.status_code = 200
            outcome = await relay_stream(
                resp, send, self.deps, engine, info, want=self.call.usage_wanted, n=self.call.n
            )
            info.outcome = outcome
            return
        if resp.status == 200 and self.call.collect is not None and _is_sse(resp):
            await self._collected(info, engine, resp, send)
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
            info.usage = usage_of(body)
            await send_bytes(send, 200, normalize_success(body))
            return
        info.outcome = "rejected" if resp.status < 500 else "engine_error"
        self.deps.metrics.upstream_errors.labels(engine.url, f"http_{resp.status}").inc()
        await send_bytes(send, resp.status, normalize_error(resp.status, body, self.call.route))

    async def _collected(
        self, info: RequestInfo, engine: Engine, resp: aiohttp.ClientResponse, send: Send
    ) -> None:
        call = self.call
        assert call.collect is not None
        try:
            status, body = await collect_stream(
                resp, self.deps, engine, info, route=call.route, request=call.collect, n=call.n
            )
        except ApiError as err:
            info.outcome = "timeout" if err.status_code == 504 else "engine_error"
            await self._send_error(send, err)
            return
        self.status_code = status
        if status != 200:
            info.outcome = "rejected" if status < 500 else "engine_error"
            self.deps.metrics.upstream_errors.labels(engine.url, f"http_{status}").inc()
        await send_bytes(send, status, body)

    async def _send_error(self, send: Send, err: ApiError) -> None:
        self.status_code = err.status_code
        await send_error(send, err)


def _is_sse(resp: aiohttp.ClientResponse) -> bool:
    return resp.content_type == "text/event-stream"


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
