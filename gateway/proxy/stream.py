"""Relay an engine's SSE stream frame by frame, as it arrives, and end it cleanly on failure."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp
from starlette.types import Send

from gateway.errors import ApiError, BadGateway
from gateway.metering.stream_options import (
    UsageWanted,
    fingerprint_of,
    for_client,
    is_finish,
    with_fingerprint,
)
from gateway.metering.usage import StreamUsage, find_usage, is_final_usage
from gateway.proxy.normalize import normalize_error, normalize_success, stream_error_status
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, error_frame, frame_data, is_done
from gateway.request_context import RequestInfo
from gateway.routing.engines import Engine

if TYPE_CHECKING:
    from gateway.proxy.relay import ProxyDeps

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def transform_frame(frame: bytes) -> bytes:
    """One frame as the client should see it: forbidden nulls dropped, error codes as strings."""
    data = frame_data(frame)
    if data is None or (b"null" not in data and not data.startswith(b'{"error"')):
        return frame
    if data.startswith(b'{"error"'):
        return b"data: " + normalize_error(stream_error_status(data), data) + b"\n\n"
    fixed = normalize_success(data)
    return frame if fixed is data else b"data: " + fixed + b"\n\n"


class FrameFilter:
    """Each frame as the client should see it, noting the engine's usage on the way.

    The engine is asked for usage in every frame; the client gets only what it asked for. For
    a client that asked for none, finish frames get back the system_fingerprint vLLM moves to
    the usage frame: from the engine's cache when known; else (an engine's first stream) the
    stream is held from the first finish frame until the usage frame says it, order kept.
    """

    __slots__ = ("engine", "held", "tap", "want")

    def __init__(self, want: UsageWanted | None, n: int, engine: Engine) -> None:
        self.tap = StreamUsage(n)
        self.want = want
        self.engine = engine
        self.held: list[bytes] = []  # payloads waiting for the fingerprint, in order

    def __call__(self, frame: bytes) -> bytes:
        data = frame_data(frame)
        span = None if data is None else find_usage(data)
        if data is None or span is None:
            return self.release() + transform_frame(frame)
        self.tap.feed(data, span)
        want = self.want
        if want is None or want.everything:
            return transform_frame(frame)
        if want.include_usage:
            return _shown(for_client(data, want, span) or data)
        return self._without_usage(data, span)

    def _without_usage(self, data: bytes, span: tuple[int, int, int]) -> bytes:
        """A frame for a client that asked for no usage (see the class docstring)."""
        if is_final_usage(data):
            found = fingerprint_of(data)
            if found is not None:
                self.engine.fingerprint = found.decode()
            return self.release(found)
        payload = for_client(data, UsageWanted(False, False), span) or data
        if is_finish(payload):
            known = self.engine.fingerprint
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
    resp: aiohttp.ClientResponse,
    send: Send,
    deps: ProxyDeps,
    engine: Engine,
    info: RequestInfo,
    *,
    want: UsageWanted | None = None,
    n: int = 1,
) -> str:
    """Send the stream; return the outcome. `want`: the usage the client asked for (None: pass
    usage on as the engine sent it); the engine's usage is noted in `info.usage` as it comes."""
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
    started = time.perf_counter()
    splitter = FrameSplitter()
    shown = FrameFilter(want, n, engine)
    saw_done = False
    error: ApiError | None = None
    try:
        async for chunk in resp.content.iter_any():
            frames = splitter.feed(chunk)
            if not frames:
                continue
            if info.ttft_ms is None:
                info.ttft_ms = (time.perf_counter() - started) * 1000
                deps.metrics.ttft.labels(info.model or "").observe(info.ttft_ms / 1000)
            saw_done = saw_done or is_done(frames[-1])
            out = b"".join([shown(f) for f in frames])
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except TimeoutError as exc:
        error = deps.upstream.failure(engine, "timeout", exc, stream=True)
    except aiohttp.ClientError as exc:
        error = deps.upstream.failure(engine, "stream_cut", exc)
    finally:  # also when cancelled: bill what the engine generated until then
        info.usage = shown.tap.usage
    held = shown.release()
    if held:
        await send({"type": "http.response.body", "body": held, "more_body": True})
    if error is None and not saw_done:
        deps.metrics.upstream_errors.labels(engine.url, "stream_cut").inc()
        error = BadGateway(
            "The engine ended the stream before it finished.", code="engine_disconnected"
        )
    if error is not None:
        await send(
            {
                "type": "http.response.body",
                "body": error_frame(error) + DONE_FRAME,
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return "ok" if error is None else ("timeout" if error.status_code == 504 else "engine_error")
