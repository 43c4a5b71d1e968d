"""Relay an engine's SSE stream frame by frame, as it arrives, and end it cleanly on failure.

What each frame becomes is a frame filter's job: `FrameFilter` for chat and completions
(`data:` frames ending in `data: [DONE]`, usage cut to what the client asked for), and
`proxy/events.py`'s `ResponseEvents` for the Responses API (`event:` + `data:` frames, relayed
unchanged, ending in a terminal event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.types import Send

from gateway.errors import ApiError, BadGateway
from gateway.metering.stream_options import (
    UsageWanted,
    fingerprint_of,
    for_client,
    is_finish,
    with_fingerprint,
)
from gateway.metering.usage import StreamUsage, Usage, choice_of, find_usage
from gateway.metrics import model_label
from gateway.proxy.cut import Cut, shutdown_error
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.engine_dead import ENGINE_DEAD, engine_dead
from gateway.proxy.normalize import (
    FORBIDDEN_NULL,
    normalize_error,
    normalize_success,
    stream_error_status,
)
from gateway.proxy.outcome import Outcome, outcome_of_failure, outcome_of_status
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, error_frame, frame_data, with_data
from gateway.proxy.tool_ids import without_token_ids
from gateway.proxy.upstream_answers import UpstreamBroken, UpstreamResponse
from gateway.request_context import RequestInfo
from gateway.routing.engines import Engine

_COMMA = ord(",")

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def transform_frame(frame: bytes, route: str | None = None, grammar: str | None = None) -> bytes:
    """One frame as the client should see it: forbidden nulls dropped, error codes as strings,
    an error naming the field of `route`'s request it is about (`grammar`: normalize_error)."""
    data = frame_data(frame)
    if data is None or (b"null" not in data and not data.startswith(b'{"error"')):
        return frame
    if data.startswith(b'{"error"'):
        return with_data(frame, normalize_error(stream_error_status(data), data, route, grammar))
    fixed = normalize_success(data)
    return frame if fixed is data else with_data(frame, fixed)


class Frames(Protocol):
    """What relay_stream asks of a frame filter."""

    finished: bool  # the engine ended the stream as its protocol says (not cut off)
    engine_error: int | None  # the status of the error the engine ended it with, if it did
    # Awaited (once) before the frames that finish the stream are sent: a stored response's
    # home noted before its client can see it whole (events.py). None: nothing to wait for.
    before_end: Callable[[], Awaitable[None]] | None

    @property
    def began(self) -> bool:
        """A frame of the answer itself has come (the time to first token is taken then)."""
        ...

    def __call__(self, frame: bytes) -> bytes:
        """The bytes to send the client for one engine frame (may be none, or held ones)."""
        ...

    def release(self) -> bytes:
        """Frames still held back, once the engine's stream is over."""
        ...

    def failure(self, error: ApiError) -> bytes:
        """What ends a stream the gateway has to cut short."""
        ...

    def refusal(self) -> ApiError | None:
        """What a stream the engine dropped means when it is the engine refusing the request
        (the client's doing, not the engine failing); None: the engine failed."""
        ...

    @property
    def usage(self) -> Usage | None:
        """What the engine reported using (so far)."""
        ...


class FrameFilter:
    """Each frame as the client should see it, noting the engine's usage on the way.

    The engine is asked for usage in every frame; the client gets only what it asked for. For
    a client that asked for none, finish frames get back the system_fingerprint vLLM moves to
    the usage frame: from the engine's cache when known; else (an engine's first stream) the
    stream is held from the first finish frame until the usage frame says it, order kept.
    """

    __slots__ = (
        "before_end",
        "cut_usage",
        "engine",
        "engine_error",
        "finished",
        "grammar",
        "held",
        "known",
        "route",
        "tap",
        "token_ids_asked",
        "want",
    )

    def __init__(
        self,
        want: UsageWanted | None,
        n: int,
        engine: str,
        known: dict[str, str],
        *,
        route: str | None = None,
        grammar: str | None = None,
        token_ids_asked: bool = False,
    ) -> None:
        self.tap = StreamUsage(n)
        self.want = want
        self.engine = engine  # its URL
        self.known = known  # engine URL → its system_fingerprint
        self.held: list[bytes] = []  # payloads waiting for the fingerprint, in order
        self.finished = False
        self.before_end: Callable[[], Awaitable[None]] | None = None  # (nothing to wait for)
        self.cut_usage = want is not None and not want.continuous  # from every token frame
        self.engine_error: int | None = None  # the status of the engine's error frame, if sent
        self.route = route  # "completions", …: what an error frame's field names belong to
        self.grammar = grammar  # the field a grammar error is about (normalize_error)
        # The gateway asked the engine for token ids the client did not (tool_ids.py): they are
        # cut out, and the frames vLLM sent only for them are tapped for usage and dropped.
        self.token_ids_asked = token_ids_asked

    @property
    def usage(self) -> Usage | None:
        return self.tap.usage

    @property
    def began(self) -> bool:
        return True  # vLLM's first chat or completions frame comes with the first token

    def failure(self, error: ApiError) -> bytes:
        return error_frame(error) + DONE_FRAME

    def refusal(self) -> ApiError | None:
        return None  # vLLM refuses chat and completions with an error frame

    def __call__(self, frame: bytes) -> bytes:
        if self.token_ids_asked:
            kept = without_token_ids(frame, self.tap)
            if kept is None:  # sent only for its ids: its usage noted, nothing shown
                return b""
            frame = kept
        return self._relayed(frame)

    def _relayed(self, frame: bytes) -> bytes:
        if self.cut_usage and not self.held:
            token = self.token_frame(frame)
            if token is not None:
                return token
        data = frame_data(frame)
        span = None if data is None else find_usage(data)
        if data is None or span is None:
            if data == b"[DONE]":
                self.finished = True
            elif data is not None and data.startswith(b'{"error"'):
                return self.release() + self._engine_error(frame, data)
            return self.release() + transform_frame(frame)
        final = self.tap.feed(data, span)
        want = self.want
        if want is None or want.everything:
            return transform_frame(frame)
        if want.include_usage:
            return _shown(for_client(data, want, span) or data)
        return self._without_usage(data, span, final)

    def _engine_error(self, frame: bytes, data: bytes) -> bytes:
        """The engine's error frame, as the client gets it; its status noted."""
        if ENGINE_DEAD in data:  # (the gateway's 503, as before a stream: engine_dead.py)
            self.engine_error = 503
            return error_frame(engine_dead())
        self.engine_error = stream_error_status(data)
        return transform_frame(frame, self.route, self.grammar)

    def token_frame(self, frame: bytes) -> bytes | None:
        """A token frame as vLLM sends it (`data: {…,"usage":{…}}`, one line, a choice that
        has not finished) without its usage, noted on the way; None for any other frame, for
        the general path to read. The same bytes out and the same usage noted as that path,
        with the same usage span (find_usage), at a third of its CPU: nearly every frame of a
        stream is one of these, and clients rarely ask for their usage."""
        span = find_usage(frame)
        if (
            span is None
            or span[2] != len(frame) - 3  # the usage is the frame's last member: `}\n\n` after it
            or frame[span[0] - 1] != _COMMA
            or not frame.endswith(b"}\n\n")
            or frame.find(b"\n") != len(frame) - 2
            or not frame.startswith(b"data: {")
            or frame.startswith(b'data: {"error"')
            or is_finish(frame)
        ):
            return None
        index = choice_of(frame)
        if index is None:  # the usage frame that ends the stream
            return None
        shown = frame[: span[0] - 1] + b"}\n\n"
        if FORBIDDEN_NULL.search(shown) is not None:
            return None
        self.tap.choices[index] = frame[span[1] : span[2]]
        return shown

    def _without_usage(self, data: bytes, span: tuple[int, int, int], final: bool) -> bytes:
        """A frame for a client that asked for no usage (see the class docstring); `final`:
        the usage-only frame that ends the stream."""
        if final:
            found = fingerprint_of(data)
            if found is not None:
                self.known[self.engine] = found.decode()
            return self.release(found)
        payload = for_client(data, UsageWanted(False, False), span) or data
        if is_finish(payload):
            known = self.known.get(self.engine)
            if known is None:
                self.held.append(payload)
                return b""
            payload = with_fingerprint(payload, known.encode())
        if self.held:
            self.held.append(payload)
            return b""
        return _shown(payload)

    def release(self, fingerprint: bytes | None = None) -> bytes:
        """The held frames, their finish frames with the fingerprint if it is known now."""
        if not self.held:
            return b""
        held, self.held = self.held, []
        if fingerprint is not None:
            held = [with_fingerprint(p, fingerprint) if is_finish(p) else p for p in held]
        return b"".join(_shown(payload) for payload in held)


def _shown(payload: bytes) -> bytes:
    return transform_frame(b"data: " + payload + b"\n\n")


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
