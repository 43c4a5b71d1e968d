"""Non-streaming generations, streamed from the engine and collected into one JSON body.

A request is asked of the engine as a stream (with usage in every chunk) unless it uses
something only vLLM's non-streaming path returns: prompt logprobs (also implied by `echo` on
/v1/chat/completions, and by `echo` with `logprobs` on /v1/completions), beam search,
KV-transfer parameters, or its own `stream_options` (vLLM refuses those on a non-streaming
request, and its 400 should reach the client; a null or empty one it takes, and so is it
asked as a stream). Those pass through unchanged, and a client
that abandons one is billed its prompt as estimated (metering/accounting.py), none of what the
engine generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from gateway import exact_json
from gateway.errors import ApiError, BadGateway, GatewayTimeout
from gateway.metering.stream_options import FORCED_USAGE
from gateway.metering.usage import StreamUsage
from gateway.proxy.assemble import Assembler, assembler_for
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.first_look import bad_answer
from gateway.proxy.normalize import normalize_error, stream_error_status, strip_forbidden_nulls
from gateway.proxy.sse import FrameSplitter, data_array, frame_data, split_frames
from gateway.proxy.upstream_answers import UpstreamBroken, UpstreamResponse
from gateway.request_context import RequestInfo
from gateway.routing.engines import Engine

COLLECTED_ROUTES = ("chat/completions", "completions")
# How an engine's error frame begins. A block without these bytes has none; one with them (a
# chunk may hold them too, deeper in) is read frame by frame, which tells which it is.
_ERROR_PAYLOAD = b'{"error"'
_SPLICE = b'"stream":true,"stream_options":' + orjson.dumps(FORCED_USAGE) + b","


def _passes_through(route: str, body: dict[str, Any]) -> bool:
    # vLLM refuses `stream_options` on a non-streaming request (its 400 reaches the client)
    # unless it is null or empty, as this test reads it: those are asked as a stream too.
    if route not in COLLECTED_ROUTES or body.get("stream_options"):
        return True
    if body.get("prompt_logprobs") is not None or body.get("use_beam_search"):
        return True
    if body.get("kv_transfer_params") is not None:
        return True
    if route == "chat/completions":  # vLLM's chat echo asks for prompt logprobs as well
        return bool(body.get("echo"))
    return bool(body.get("echo")) and body.get("logprobs") is not None


def stream_request(route: str, raw: bytes, body: dict[str, Any]) -> bytes | None:
    """The body that asks the engine for a stream with usage in every chunk, or None when this
    request must go as it is. Without a `stream` member the two fields are spliced in after the
    opening brace (the rest stays byte for byte); with one, the body is re-serialised."""
    if _passes_through(route, body):
        return None
    if "stream" not in body and "stream_options" not in body:
        start = raw.find(b"{")
        return raw[: start + 1] + _SPLICE + raw[start + 1 :]
    return exact_json.dumps({**body, "stream": True, "stream_options": FORCED_USAGE})


async def collect_stream(
    resp: UpstreamResponse,
    deps: ProxyDeps,
    engine: Engine,
    info: RequestInfo,
    *,
    route: str,
    request: dict[str, Any],
    n: int,
    grammar: str | None = None,
) -> tuple[int, bytes]:
    """Read the engine's stream to its end: (status, body) as vLLM would have answered.

    The usage seen so far is kept in `info.usage` however this ends (cancelled included), so
    an abandoned request is billed for what the engine generated. Raises ApiError when the
    engine goes silent or away, or has not finished within `deps.response_timeout_s` (504, as
    a non-streaming answer the engine takes longer for).
    """
    started = info.arrived  # time to first token, as the client waits it
    tap = StreamUsage(n)
    assembler = assembler_for(route, request)
    splitter = FrameSplitter()
    try:
        async with asyncio.timeout(deps.response_timeout_s):
            error = await _read(resp, tap, assembler, info, started, splitter=splitter)
    except asyncio.CancelledError:  # the client left (or the drain's grace ended)
        _count_received(resp, splitter, tap)
        raise
    except orjson.JSONDecodeError as exc:  # an answer the OpenAI API never gives
        bad_answer(deps.metrics, engine, "a stream frame that is not JSON")
        raise BadGateway(
            "The engine's answer could not be read: a frame of its stream is not JSON.",
            code="engine_bad_answer",
        ) from exc
    except TimeoutError as exc:  # the whole answer's deadline (a silence raises UpstreamBroken)
        if info.ttft_ms is None:  # nothing came: counted towards the engine's ejection
            deps.upstream.failure(engine, "timeout", exc)
        # else the engine was generating all along (a silence is cut sooner): the answer asked
        # for is longer than the deadline, the request's doing, not the engine's failure (three
        # such ejected a healthy engine: any tenant could move traffic off it at will)
        raise GatewayTimeout(
            f"The engine did not finish its answer within {deps.response_timeout_s:g}s.",
            code="engine_timeout",
        ) from exc
    except UpstreamBroken as broken:
        raise deps.upstream.failure(engine, broken.kind, broken.cause, midway=True) from broken
    finally:
        info.usage = tap.usage
    if error is not None:
        return _engine_error(error, route, grammar)
    if tap.final is None:  # vLLM's last frame before [DONE] carries the total usage
        deps.metrics.upstream_errors.labels(engine.url, "stream_cut").inc()
        raise _cut()
    body = assembler.body()
    strip_forbidden_nulls(body)  # the body vLLM would send, with the nulls OpenAI forbids
    return 200, orjson.dumps(body)


def _count_received(resp: UpstreamResponse, splitter: FrameSplitter, tap: StreamUsage) -> None:
    """The chunks that arrived but were not read yet are counted too: a gateway that sees its
    client go late (a pause, a busy loop) bills what the engine sent before the connection
    closed."""
    with contextlib.suppress(ValueError):  # (a frame that is not JSON: counted as far as read)
        for one in chunks_of(splitter.feed_block(resp.received()))[0]:
            tap.feed_chunk(one)


async def _read(
    resp: UpstreamResponse,
    tap: StreamUsage,
    assembler: Assembler,
    info: RequestInfo,
    started: float,
    *,
    splitter: FrameSplitter,
) -> bytes | None:
    """Feed the engine's chunks to the usage tap and the assembler until the stream ends, or
    until an engine error frame, which is returned (its payload)."""
    async for chunk in resp.chunks():
        block = splitter.feed_block(chunk)
        if not block:
            continue
        loaded, error = chunks_of(block)
        if info.ttft_ms is None and (loaded or error is not None):
            info.ttft_ms = (time.perf_counter() - started) * 1000
        for one in loaded:
            tap.feed_chunk(one)
            assembler.feed(one)
        if error is not None:
            return error
    return None


def chunks_of(block: bytes) -> tuple[list[Any], bytes | None]:
    """The chunks a run of complete frames carries, loaded (before an engine's error frame, if
    it has one), and that error's payload. One call into orjson per read, not per token."""
    array = data_array(block)
    if array is not None and _ERROR_PAYLOAD not in array:  # (an error is read frame by frame)
        try:
            loaded: list[Any] = orjson.loads(array)
        except orjson.JSONDecodeError:  # read frame by frame, below: the same answer
            pass
        else:
            return loaded, None
    payloads = payloads_of(split_frames(block))
    error = next((i for i, data in enumerate(payloads) if data.startswith(_ERROR_PAYLOAD)), None)
    kept = payloads[:error]
    loaded = orjson.loads(b"[" + b",".join(kept) + b"]") if kept else []
    return loaded, None if error is None else payloads[error]


def payloads_of(frames: list[bytes]) -> list[bytes]:
    """The data of the frames that carry a chunk (not comments, not `[DONE]`)."""
    return [data for data in map(frame_data, frames) if data and data != b"[DONE]"]


def _engine_error(data: bytes, route: str, grammar: str | None) -> tuple[int, bytes]:
    status = stream_error_status(data)
    return status, normalize_error(status, data, route, grammar)


def _cut() -> ApiError:
    return BadGateway("The engine ended the answer before it finished.", code="engine_disconnected")
