"""Non-streaming Responses API requests, streamed from the engine and answered with the
terminal event's response.

vLLM aborts a non-streaming request whose client hung up and says nothing of what it used, so
one abandoned used to be billed 0 tokens. Asked as a stream instead, its events are counted as
a relayed stream's are (gateway/proxy/events.py: the input estimated at admission, one output
token per delta, vLLM's own usage once it reports it), and the terminal event carries the
response object vLLM's non-streaming path would have sent (the same model, dumped the same way).
"""

from __future__ import annotations

import asyncio
import time

import orjson

from gateway import exact_json
from gateway.errors import BadGateway, GatewayTimeout
from gateway.proxy.assemble import answered_arguments
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.events import DELTAS, ERROR, TERMINAL, ResponseEvents, event_response
from gateway.proxy.normalize import normalize_error, stream_error_status
from gateway.proxy.sse import FrameSplitter, frame_event
from gateway.proxy.upstream_answers import UpstreamBroken, UpstreamResponse
from gateway.request_context import RequestInfo
from gateway.routing.engines import Engine

_STREAM = b'"stream":true,'


class NeverBegan(Exception):
    """The engine dropped the stream after its opening events, before generating anything.

    vLLM checks some fields only when the request reaches its engine (top_logprobs over the
    engine's maximum, a grammar it cannot compile, token ids outside the vocabulary), and on a
    stream that has begun it can only close the connection; its non-streaming path answers 400
    naming the field. The relay then asks the same engine for the request as the client sent
    it, which nothing was generated for.
    """


def stream_response_request(raw: bytes, body: dict[str, object]) -> bytes:
    """The body that asks the engine for the response as a stream: `"stream":true` spliced in
    after the opening brace (the rest byte for byte), or the body re-serialised if it has a
    `stream` member already."""
    if "stream" not in body:
        start = raw.find(b"{")
        return raw[: start + 1] + _STREAM + raw[start + 1 :]
    return exact_json.dumps({**body, "stream": True})


async def collect_events(
    resp: UpstreamResponse,
    deps: ProxyDeps,
    engine: Engine,
    info: RequestInfo,
    events: ResponseEvents,
) -> tuple[int, bytes]:
    """Read the engine's event stream to its terminal event: (status, body) as vLLM would have
    answered. What `events` counted is kept in `info.usage` however this ends (cancelled
    included). Raises ApiError when the engine goes silent or away, or has not finished within
    `deps.response_timeout_s`; NeverBegan when it went away before it began."""
    started = info.arrived  # time to first token, as the client waits it
    try:
        async with asyncio.timeout(deps.response_timeout_s):
            final = await _read(resp, events, info, started)
    except TimeoutError as exc:
        deps.upstream.failure(engine, "timeout", exc)
        raise GatewayTimeout(
            f"The engine did not finish its answer within {deps.response_timeout_s:g}s.",
            code="engine_timeout",
        ) from exc
    except UpstreamBroken as broken:
        if broken.kind != "timeout" and not events.began:
            raise NeverBegan from broken
        raise deps.upstream.failure(engine, broken.kind, broken.cause, midway=True) from broken
    finally:
        info.usage = events.usage
    if final is None:
        deps.metrics.upstream_errors.labels(engine.url, "stream_cut").inc()
        raise BadGateway(
            "The engine ended the answer before it finished.", code="engine_disconnected"
        )
    event, data = final
    if event == ERROR:
        return _engine_error(data)
    body = _response_of(data)
    if body is None:
        raise BadGateway("The engine's last event holds no response.", code="engine_error")
    return 200, body


async def _read(
    resp: UpstreamResponse, events: ResponseEvents, info: RequestInfo, started: float
) -> tuple[bytes, bytes] | None:
    """Feed the events to `events` until a terminal or error event: its (type, payload)."""
    splitter = FrameSplitter()
    async for chunk in resp.chunks():
        for frame in splitter.feed(chunk):
            events(frame)
            event = frame_event(frame)
            if info.ttft_ms is None and (event in DELTAS or events.finished):
                info.ttft_ms = (time.perf_counter() - started) * 1000
            if events.finished and event is not None and (event in TERMINAL or event == ERROR):
                return event, events.last
    return None


def _response_of(data: bytes) -> bytes | None:
    """The terminal event's `response`, as the body: with `tool_choice` "required", each
    function call's arguments written again as vLLM's non-streaming answer writes them (its
    stream passes on the model's own text: assemble.answered_arguments)."""
    response = event_response(data)
    if not isinstance(response, dict):
        return None
    if response.get("tool_choice") == "required" and isinstance(response.get("output"), list):
        for item in response["output"]:
            if isinstance(item, dict) and item.get("type") == "function_call":
                arguments = item.get("arguments")
                if isinstance(arguments, str):
                    item["arguments"] = answered_arguments(arguments, True)
    return orjson.dumps(response)


def _engine_error(data: bytes) -> tuple[int, bytes]:
    """An `error` event as the JSON error vLLM would have answered (its fields may sit at the
    top, as OpenAI's error event has them, or under `error`)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and not isinstance(event.get("error"), dict):
        data = orjson.dumps({"error": event})
    status = stream_error_status(data)
    return status, normalize_error(status, data, "responses")
