"""The proxied response: forward one request to an engine and relay its answer to the client.

It is an ASGI response so that it can watch the client's connection while it works: a
disconnect at any stage (waiting for headers, for the first token, mid-stream, or for a
non-streaming body) cancels the work, which closes the upstream connection, which makes vLLM
abort the request and free its slot; so does a client that stops reading (a write not taken
within upstream.write_timeout_s). When it is done it reports a neutral `ProxyResult`
(engine, status, outcome, usage, timings) to whoever the API layer wired in; what that costs
is metering's business, not the proxy's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.client_link import drop_client
from gateway.errors import ApiError, BadGateway
from gateway.metering.usage import usage_of
from gateway.metrics import model_label
from gateway.proxy.asgi_send import WriteDeadline, send_bytes, send_error
from gateway.proxy.call import ProxyCall
from gateway.proxy.collect import collect_stream
from gateway.proxy.collect_events import NeverBegan, collect_events
from gateway.proxy.cut import Cut, shutdown_error
from gateway.proxy.departure import Departure
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.engine_dead import ENGINE_DEAD, engine_dead
from gateway.proxy.events import ResponseEvents, response_id_of
from gateway.proxy.first_look import bad_answer
from gateway.proxy.normalize import normalize_error, normalize_success
from gateway.proxy.outcome import (
    PAID_FOR,
    Outcome,
    ProxyResult,
    Reporter,
    outcome_of_failure,
    outcome_of_status,
)
from gateway.proxy.stream import relay_stream
from gateway.proxy.upstream import home_unavailable
from gateway.proxy.upstream_answers import UpstreamBroken, UpstreamResponse
from gateway.request_context import RequestInfo, info_of
from gateway.routing.engines import Engine
from gateway.routing.overload import EnginesOverloaded

CLIENT_CLOSED = 499  # nginx's status for "client closed request"; only in metrics and logs


async def _nobody(result: ProxyResult) -> None:
    pass


class ProxyResponse(Response):
    def __init__(self, deps: ProxyDeps, call: ProxyCall, report: Reporter = _nobody) -> None:
        # Response.__init__ would render a body; this response writes its own.
        self.deps = deps
        self.call = call
        self.report = report
        self.background = None
        self.status_code = 0
        self.cut: Cut | None = None  # the request's, once it is served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = info_of(scope)
        info.model = self.call.pool.name
        started = info.arrived  # a latency, as its time to first token, counts from here
        info.headers += [(k.encode(), v.encode()) for k, v in self.call.headers.items()]
        task = asyncio.current_task()
        assert task is not None
        cut = self.cut = Cut(task)
        cuts = self.deps.cuts
        cuts.add(cut)
        deadline = WriteDeadline(send, self.deps.write_timeout_s)
        deadline.task = cut  # a client that stops reading is cut like one that left

        def client_left() -> None:
            if not deadline.answered:  # after the last byte, a close is not leaving halfway
                cut.client_left()

        departure = Departure(scope, receive, client_left)
        reached = False  # a 200's bytes had begun to reach the client when a cancel came
        try:
            if await departure.gone():  # a client already gone is sent no engine
                info.outcome, self.status_code = Outcome.CLIENT_DISCONNECTED, CLIENT_CLOSED
            else:
                await self._forward(info, deadline)
        except asyncio.CancelledError:
            reached = self.status_code == 200 and deadline.started
            if not await self._cut_short(info, cut, deadline, reached):
                raise
        except Exception:
            self.status_code = 500  # the middleware answers it and logs the traceback
            raise
        finally:
            cut.close()
            cuts.discard(cut)
            departure.close()
            deadline.close()
            answered = reached or (self.status_code == 200 and deadline.started)
            if info.outcome not in PAID_FOR and not answered:
                # Answered an error (or nothing) the gateway's or the engine's side caused: no
                # part of the answer reached the client, so it pays nothing (an SDK retries it).
                # A stream cut midway (by uvicorn too, whose cancel comes after the drain's end
                # could not be written) pays for what the engine generated for it.
                info.usage = None
            # Not shielded (a task per request): reporters do not suspend before they have
            # accounted for the request (outcome.Reporter).
            await self._done(info, time.perf_counter() - started)
            if cut.outcome is Outcome.SLOW_CLIENT:
                await drop_client(scope)

    async def _cut_short(
        self, info: RequestInfo, cut: Cut, deadline: WriteDeadline, reached: bool
    ) -> bool:
        """A CancelledError reached the request: True if it was its cut's (the client left or
        stopped reading, or the drain's grace is over; answered here if nothing was yet),
        False if uvicorn's (it cancels what outlives its grace: the error goes on up)."""
        if not cut.take_back():
            info.outcome = Outcome.GATEWAY_SHUTDOWN
            if not reached:  # (else the client was answered a 200 it did not leave)
                self.status_code = CLIENT_CLOSED
            return False
        self.status_code = CLIENT_CLOSED
        assert cut.outcome is not None
        info.outcome = cut.outcome
        if cut.outcome is Outcome.GATEWAY_SHUTDOWN and not deadline.started:
            await self._send_error(deadline, shutdown_error())  # (a stream ends itself)
        return True

    async def _done(self, info: RequestInfo, elapsed: float) -> None:
        metrics, model, route = self.deps.metrics, model_label(self.call.pool.name), self.call.route
        metrics.requests.labels(model, route, str(self.status_code)).inc()
        info.counted = True
        if self.status_code == CLIENT_CLOSED:  # (left midway: the access log says so too)
            info.status = CLIENT_CLOSED
        metrics.duration.labels(model, route).observe(elapsed)
        if info.engine is not None:
            metrics.engine_requests.labels(info.engine, str(self.status_code)).inc()
        result = ProxyResult(
            info.engine,
            self.status_code,
            info.outcome,
            info.usage,
            info.ttft_ms,
            elapsed,
            info.response_id,
        )
        await self.report(result)

    async def _forward(self, info: RequestInfo, send: Send, again: Engine | None = None) -> None:
        """Ask an engine and answer; `again`: ask this engine for `call.unstreamed`."""
        call, deps = self.call, self.deps
        engine_id = info.engine_request_id or info.request_id
        headers = {"content-type": "application/json", "x-request-id": engine_id}

        def trying(engine: Engine | None) -> None:
            info.engine = None if engine is None else engine.url

        try:  # the balancer refuses too: every engine over its queue bound (overload.py)
            engines = call.engines if again is None else [again]
            if engines is None:
                engines = deps.balancer.candidates(call.pool, call.affinity)
            body = call.body if again is None or call.unstreamed is None else call.unstreamed
            engine, resp = await deps.upstream.open(
                engines,
                call.path or "/v1/" + call.route,
                body,
                headers,
                call.stream,
                trying=trying,
                method=call.method,
                reload=call.reload,
            )
        except ApiError as err:
            if isinstance(err, EnginesOverloaded) or err.code == "gateway_busy":
                # (past admission, refused for the fleet's or this replica's own saturation,
                # nothing sent: its admission given back whole, rpm entry too; a gateway_busy
                # was kept charged, and logged engine_unavailable though every engine was up)
                info.outcome = Outcome.SHED
            elif info.engine is None:
                info.outcome = Outcome.ENGINE_UNAVAILABLE
                if call.engines is not None and err.code == "engine_unavailable":
                    err = home_unavailable()  # (a stored response's: only its engine tried)
            else:
                info.outcome = outcome_of_failure(err.status_code)
            await self._send_error(send, err)
            return
        never_began = False
        try:
            await self._answer(info, engine, resp, send)
            resp.release()
        except NeverBegan:
            never_began = again is None
            if not never_began:
                raise
        finally:
            resp.close()
            engine.done()  # counted by Upstream.open when it chose the engine
        if never_began:
            info.usage, info.ttft_ms = None, None  # nothing was generated
            await self._forward(info, send, again=engine)

    async def _answer(
        self, info: RequestInfo, engine: Engine, resp: UpstreamResponse, send: Send
    ) -> None:
        sse = resp.content_type == "text/event-stream"
        if resp.status == 200 and sse and self.call.stream:
            self.status_code = 200
            note = None if self.call.stored is None else partial(self._stored, engine=engine)
            events = ResponseEvents(self.call.input_estimate, note) if self.call.responses else None
            info.outcome = await relay_stream(
                resp,
                send,
                self.deps,
                engine,
                info,
                want=self.call.usage_wanted,
                n=self.call.n,
                frames_filter=events,
                cut=self.cut,
                route=self.call.route,
                grammar=self.call.grammar,
                token_ids_asked=self.call.token_ids_asked,
            )
            info.response_id = None if events is None else events.response_id
            return
        call = self.call
        if resp.status == 200 and sse and call.collect is not None:
            collecting = collect_stream(
                resp,
                self.deps,
                engine,
                info,
                route=call.route,
                request=call.collect,
                n=call.n,
                grammar=call.grammar,
            )
            await self._collected(info, engine, send, collecting)
            return
        if resp.status == 200 and sse and call.responses:  # asked as a stream (collect_events)
            events = ResponseEvents(call.input_estimate)

            async def before_answer() -> None:
                await self._stored(events.response_id, engine)

            await self._collected(
                info,
                engine,
                send,
                collect_events(resp, self.deps, engine, info, events),
                before_answer,
            )
            info.response_id = events.response_id
            return
        try:
            body = await resp.read()
        except UpstreamBroken as broken:
            err = self.deps.upstream.failure(engine, broken.kind, broken.cause, midway=True)
            info.outcome = outcome_of_failure(err.status_code)
            await self._send_error(send, err)
            return
        if resp.status == 200:
            await self._body(info, engine, body, send)
            return
        self.status_code = resp.status
        info.outcome = outcome_of_status(resp.status)
        await self._engine_error(send, engine, resp.status, body)

    async def _body(self, info: RequestInfo, engine: Engine, body: bytes, send: Send) -> None:
        """A 200 the engine answered with one body."""
        if not _json_object(body):  # (vLLM's are, every one)
            bad_answer(self.deps.metrics, engine, "a 200 whose body is not JSON")
            info.outcome = outcome_of_failure(502)
            error = BadGateway(
                "The engine's answer could not be read: its body is not JSON.",
                code="engine_bad_answer",
            )
            await self._send_error(send, error)
            return
        self.status_code = 200
        info.outcome = outcome_of_status(200)
        info.usage = usage_of(body)
        if self.call.responses:  # passed on as it is
            info.response_id = response_id_of(body)
            await self._stored(info.response_id, engine)
            await send_bytes(send, 200, body)
            return
        await send_bytes(send, 200, normalize_success(body))

    async def _engine_error(self, send: Send, engine: Engine, status: int, body: bytes) -> None:
        """The engine's error answer, as OpenAI's (normalize_error)."""
        self._refused(engine, status)
        if status == 500 and ENGINE_DEAD in body:  # it answers so until it is restarted
            await self._send_error(send, engine_dead())
            return
        call = self.call
        await send_bytes(
            send,
            status,
            normalize_error(status, body, call.route, call.grammar),
            extra=engine_refusal_headers(status),
        )

    async def _collected(
        self,
        info: RequestInfo,
        engine: Engine,
        send: Send,
        collecting: Coroutine[Any, Any, tuple[int, bytes]],
        before_answer: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Answer with the body `collecting` assembles from the engine's stream;
        `before_answer`: awaited before a 200 is."""
        try:
            status, body = await collecting
        except ApiError as err:
            info.outcome = outcome_of_failure(err.status_code)
            await self._send_error(send, err)
            return
        self.status_code = status
        info.outcome = outcome_of_status(status)
        if status != 200:
            self._refused(engine, status)
        if status == 500 and ENGINE_DEAD in body:  # (in the stream's error frame)
            await self._send_error(send, engine_dead())
            return
        if status == 200 and before_answer is not None:
            await before_answer()
        await send_bytes(send, status, body, extra=engine_refusal_headers(status))

    async def _stored(self, response_id: str | None, engine: Engine) -> None:
        """A stored response's home noted (ProxyCall.stored), before its client has it."""
        if self.call.stored is not None and response_id is not None:
            await self.call.stored(response_id, engine.url)

    def _refused(self, engine: Engine, status: int) -> None:
        """An engine's error answer: counted, and a 5xx towards the engine's ejection."""
        self.deps.metrics.upstream_errors.labels(engine.url, f"http_{status}").inc()
        if status >= 500:
            engine.record_failure("http_5xx", f"status {status}")

    async def _send_error(self, send: Send, err: ApiError) -> None:
        self.status_code = err.status_code
        await send_error(send, err)


def engine_refusal_headers(status: int) -> tuple[tuple[bytes, bytes], ...]:
    """An engine's 429 or 503 (busy, starting, its queue full) relayed as the last engine's
    answer says when to try again, as the gateway's own 429s and 503s do: OpenAI's SDKs wait
    that long before their retry instead of their own backoff."""
    return ((b"retry-after", b"1"),) if status in (429, 503) else ()


def _json_object(body: bytes) -> bool:
    """Whether a body can be a JSON object, by its first and last bytes (a full parse of a
    large embeddings answer would cost milliseconds)."""
    text = body.strip()
    return text[:1] == b"{" and text[-1:] == b"}"
