"""Relay an engine's SSE stream frame by frame, as it arrives, and end it cleanly on failure.

What each frame becomes is a frame filter's job: `FrameFilter` for chat and completions
(`data:` frames ending in `data: [DONE]`, usage cut to what the client asked for), and
`proxy/events.py`'s `ResponseEvents` for the Responses API (`event:` + `data:` frames, relayed
unchanged, ending in a terminal event).
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import Send

from gateway.errors import ApiError, BadGateway
from gateway.metering.stream_options import UsageWanted
from gateway.metrics import model_label
from gateway.proxy.cut import Cut, shutdown_error
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.frame_filter import FrameFilter, Frames
from gateway.proxy.outcome import Outcome, outcome_of_failure, outcome_of_status
from gateway.proxy.sse import FrameSplitter
from gateway.proxy.upstream_answers import UpstreamBroken, UpstreamResponse
from gateway.request_context import RequestInfo
from gateway.routing.engines import Engine

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def relay_stream(
    resp: UpstreamResponse,
    send: Send,
    deps: ProxyDeps,
    engine: Engine,
    info: RequestInfo,
    *,
    want: UsageWanted | None = None,
    n: int = 1,
    frames_filter: Frames | None = None,
    cut: Cut | None = None,
    route: str | None = None,
    grammar: str | None = None,
    token_ids_asked: bool = False,
) -> Outcome:
    """Send the stream; return the outcome. `want`: the usage the client asked for (None: pass
    usage on as the engine sent it); the engine's usage is noted in `info.usage` as it comes.
    `frames_filter`: another protocol's filter (the Responses API's); default `FrameFilter`.
    `cut`: the request's; cut by the end of a drain, the stream ends with an error frame.
    `route`: the request's ("completions", …), whose fields an engine's error frame names;
    `grammar`: its field a grammar error is about (normalize_error); `token_ids_asked`: the
    gateway asked the engine for token ids the client did not (proxy/tool_ids.py)."""
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
    shown = frames_filter
    if shown is None:
        shown = FrameFilter(
            want,
            n,
            engine.url,
            deps.fingerprints,
            route=route,
            grammar=grammar,
            token_ids_asked=token_ids_asked,
        )
    # Chat and completions: the end of the response goes with the last frame. Not a Responses
    # stream: vLLM stores the response after its last event, and a client told the end before
    # that could ask for it before it is there.
    plain = frames_filter is None
    error: ApiError | None = None
    shut = False
    splitter = FrameSplitter()
    try:
        await _relay_frames(resp, send, deps, info, shown, splitter=splitter, plain=plain)
    except UpstreamBroken as broken:
        error = None if broken.kind == "timeout" else shown.refusal()
        if error is not None:  # not the engine's failure: no step towards its ejection
            await _end(send, shown, error, deps, engine)
            info.usage = None
            return Outcome.REJECTED
        # Midway however far it got: its client has had its 200 (a first token that never
        # came, counted `timeout`, was in no alert: neither a 5xx nor a cut stream).
        error = deps.upstream.failure(engine, broken.kind, broken.cause, stream=True, midway=True)
    except asyncio.CancelledError:
        whole = _whole_answer(shown)
        if whole is not None and cut is not None and cut.client_gone():
            return whole  # it left after its whole answer
        if cut is None or not cut.shutting_down():
            _count_received(resp, splitter, shown)
            raise  # the client left, or uvicorn cancels: nobody to answer
        error, shut = shutdown_error(), True
    finally:  # also when cancelled: bill what the engine generated until then
        info.usage = shown.usage
    if not (plain and shown.finished):  # else the client has the whole stream
        outcome = await _end(send, shown, error, deps, engine)
        if outcome != Outcome.OK:
            return Outcome.GATEWAY_SHUTDOWN if shut else outcome
    if shown.engine_error is not None:  # the engine ended it with its own error
        return outcome_of_status(shown.engine_error)
    return Outcome.OK


def _whole_answer(shown: Frames) -> Outcome | None:
    """How a stream whose client left ended, if the client had its whole answer by then: the
    engine's error frame (the SDK raises at it and closes: a 5xx one was counted the client
    leaving, 499, where the engine had failed), or a Responses stream's terminal event (the
    SDK's `break` on response.completed; vLLM has stored the response); else None."""
    refused = shown.engine_error
    if refused is not None:
        return outcome_of_status(refused)
    return Outcome.OK if shown.finished else None


def _count_received(resp: UpstreamResponse, splitter: FrameSplitter, shown: Frames) -> None:
    """For a client that left: the frames the engine sent that arrived but were not relayed
    yet go through `shown` (counted, not sent). A gateway that sees the client go late (a
    pause, a busy loop) bills what the engine sent meanwhile, before the connection closes."""
    for frame in splitter.feed(resp.received()):
        shown(frame)


async def _relay_frames(
    resp: UpstreamResponse,
    send: Send,
    deps: ProxyDeps,
    info: RequestInfo,
    shown: Frames,
    *,
    splitter: FrameSplitter,
    plain: bool,
) -> None:
    """The engine's frames, as `shown` shows them, until its stream ends. `plain`: the last
    frame ends the response; the rest of the engine's stream is read and dropped (its break
    no longer matters)."""
    started = info.arrived  # time to first token, as the client waits it
    ended = False  # the client has the whole stream; what follows is the engine's end of it
    try:
        async for chunk in resp.chunks():
            frames = splitter.feed(chunk)
            if not frames or ended:
                continue
            out = b"".join([shown(f) for f in frames])
            if shown.finished and shown.before_end is not None:
                before_end, shown.before_end = shown.before_end, None
                await before_end()
            if info.ttft_ms is None and shown.began:
                info.ttft_ms = (time.perf_counter() - started) * 1000
                deps.metrics.ttft.labels(model_label(info.model or "")).observe(info.ttft_ms / 1000)
            if shown.finished and plain:
                ended = True
                await send({"type": "http.response.body", "body": out + shown.release()})
            elif out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except UpstreamBroken:
        if not ended:
            raise


async def _end(
    send: Send, shown: Frames, error: ApiError | None, deps: ProxyDeps, engine: Engine
) -> Outcome:
    """Send what was held back and, if the stream did not finish, its failure; then close."""
    held = shown.release()
    if held:
        await send({"type": "http.response.body", "body": held, "more_body": True})
    if error is None and not shown.finished:
        deps.metrics.upstream_errors.labels(engine.url, "stream_cut").inc()
        error = BadGateway(
            "The engine ended the stream before it finished.", code="engine_disconnected"
        )
    if error is not None:
        await send({"type": "http.response.body", "body": shown.failure(error), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if error is None:
        return Outcome.OK
    return outcome_of_failure(error.status_code)
