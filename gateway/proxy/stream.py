"""Relay an engine's SSE stream frame by frame, as it arrives, and end it cleanly on failure."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp
import orjson
from starlette.types import Send

from gateway.errors import ApiError, BadGateway
from gateway.proxy.normalize import normalize_error, normalize_success, usage_tokens
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
        return b"data: " + normalize_error(_error_status(data), data) + b"\n\n"
    fixed = normalize_success(data)
    return frame if fixed is data else b"data: " + fixed + b"\n\n"


def _error_status(data: bytes) -> int:
    try:
        code = orjson.loads(data)["error"].get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return 500
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def _note_usage(frames: list[bytes], info: RequestInfo) -> None:
    for frame in frames:
        data = frame_data(frame)
        used = None if data is None else usage_tokens(data)
        if used is not None:
            info.usage_tokens = used  # cumulative: the last report wins


async def relay_stream(
    resp: aiohttp.ClientResponse,
    send: Send,
    deps: ProxyDeps,
    engine: Engine,
    info: RequestInfo,
    *,
    track_usage: bool = False,
) -> str:
    """Send the stream; return the outcome for the access log."""
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
    started = time.perf_counter()
    splitter = FrameSplitter()
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
            if track_usage and any(b'"usage":{' in f for f in frames):
                _note_usage(frames, info)
            out = b"".join(transform_frame(f) for f in frames)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    except TimeoutError as exc:
        error = deps.upstream.failure(engine, "timeout", exc, stream=True)
    except aiohttp.ClientError as exc:
        error = deps.upstream.failure(engine, "stream_cut", exc)
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
