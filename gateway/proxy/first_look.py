"""What `Upstream.open` makes of an engine's answer before it hands it on: whether the request
may still go to another engine (nothing reached the client, nothing was generated) or the
answer is the client's, as it came or as a status.

Looked at: the status (a 5xx or a 429), an answer the OpenAI API never gives (`odd`), a
stream's first bytes (broken before them, or an error frame: vLLM answers 200 as it takes a
request and sends its first frame with the first token, so an engine killed while the request
waited in its queue shows only there), a Responses API stream's first event past its opening
ones, and a 404's body (the engine forgot the model: an adapter lost in a restart).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import orjson

from gateway.errors import ApiError, BadGateway, error_body
from gateway.metrics import Metrics
from gateway.proxy.events import REFUSED
from gateway.proxy.h1 import H1Response
from gateway.proxy.normalize import model_missing, stream_error_status
from gateway.proxy.upstream_answers import (
    Begun,
    Failure,
    Read,
    UpstreamBroken,
    UpstreamResponse,
    first_bytes,
    only_opening,
    past_opening,
)
from gateway.routing.engines import Engine

_T = TypeVar("_T")
# Counts an engine's failure (towards its ejection) and gives the error its client would get:
# Upstream.failure.
FailureOf = Callable[[Engine, Failure, BaseException], ApiError]


class FirstLook:
    """Every method that returns None has closed or released the answer; the caller gives
    back the engine's count (`Engine.inflight`) and tries the next engine. A method that
    raises gave both back."""

    def __init__(
        self, metrics: Metrics, failure: FailureOf, model_missing: Callable[[Engine], None]
    ) -> None:
        self._metrics = metrics
        self._failure = failure
        self._model_missing = model_missing

    async def answered(
        self, engine: Engine, resp: H1Response, *, last: bool, stream: bool
    ) -> UpstreamResponse | None:
        """The answer to hand on; None when the request may go to another engine: an answer
        the OpenAI API never gives (`odd`: a 502 from the `last` engine), counted as the
        engine's failure, or what `_unless_failed` says of the others'."""
        strange = odd(resp)
        if strange is not None:
            resp.close()
            bad_answer(self._metrics, engine, strange)
            if last:
                engine.done()
                raise BadGateway(
                    f"The engine answered with {strange}, which is not an answer of the OpenAI "
                    "API.",
                    code="engine_bad_answer",
                )
            return None
        if not last:
            return await self._unless_failed(engine, resp)
        if resp.status == 200 and resp.content_type == "text/event-stream":
            return await self._last_stream(engine, resp, stream)
        return resp

    async def unless_model_missing(
        self, engine: Engine, resp: UpstreamResponse
    ) -> UpstreamResponse | None:
        """A 404 (read whole: a small error body). None when the engine said it does not serve
        the model (another engine may: the request is tried there); else the answer, as read."""
        body = await self._looked_at(engine, resp, resp.read())
        if body is None:  # refused, then cut: nothing generated, try another
            return None
        if not model_missing(body):
            return Read(resp, body)
        resp.release()
        self._metrics.upstream_errors.labels(engine.url, "model_missing").inc()
        self._model_missing(engine)
        return None

    async def _unless_failed(self, engine: Engine, resp: H1Response) -> UpstreamResponse | None:
        """None for a 5xx or a 429, or a stream that failed before its first frame
        (_first_frame): the request may go to another engine. Else the answer."""
        if resp.status >= 500:
            self._metrics.upstream_errors.labels(engine.url, f"http_{resp.status}").inc()
            resp.close()
            engine.record_failure("http_5xx", f"status {resp.status}")
            return None
        if resp.status == 429:  # overloaded: the next engine may not be (no step to ejection)
            self._metrics.upstream_errors.labels(engine.url, "http_429").inc()
            resp.close()
            return None
        if resp.status == 200 and resp.content_type == "text/event-stream":
            return await self._first_frame(engine, resp)
        return resp

    async def _first_frame(self, engine: Engine, resp: H1Response) -> UpstreamResponse | None:
        """A stream, once its first bytes came; None when it broke before them, or they are an
        error frame of a 5xx (vLLM's engine core gone): the request may go to another engine.
        Another error frame is the answer of its status (`_error_frame`). Silent past the idle
        timeout, it is handed on with that failure, as before."""
        frames = resp.chunks()
        first = await self._looked_at(engine, resp, first_bytes(frames))
        if first is None:
            return None
        if isinstance(first, UpstreamBroken):  # slow, not gone: the relay answers it as it would
            return Begun(resp, frames, b"", first)
        if only_opening(first):  # a Responses API stream: has it begun to generate?
            return await self._past_opening(engine, resp, frames, first)
        refusal = _error_frame(resp, first)
        if refusal is not None and refusal.status >= 500:
            resp.close()
            self._metrics.upstream_errors.labels(engine.url, f"http_{refusal.status}").inc()
            engine.record_failure("http_5xx", f"error frame {refusal.status}")
            return None
        return refusal or Begun(resp, frames, first)

    async def _last_stream(
        self, engine: Engine, resp: H1Response, stream: bool
    ) -> UpstreamResponse:
        """The last engine's stream, once its first bytes came (handed on at once: they reach
        the client as they would have). One that broke before them is the 502
        `engine_disconnected` of a connection that broke before the headers, which SDKs retry,
        and one whose first frame is an error is the answer of its status (`_error_frame`), not
        a 200 whose only frame is that error: nothing reached the client, and nothing was
        generated. Silent past the idle timeout, it is handed on with that failure, as the
        others' are. A Responses stream the client asked for is read past its opening events
        (`_last_opening`); one collected for a plain request is handed on as it came (the
        relay asks the engine again, unstreamed, when it never began: NeverBegan)."""
        frames = resp.chunks()
        try:
            first = await _kept(engine, resp, first_bytes(frames))
        except UpstreamBroken as exc:
            engine.done()
            raise self._failure(engine, exc.kind, exc.cause) from exc
        if isinstance(first, UpstreamBroken):
            return Begun(resp, frames, b"", first)
        if stream and only_opening(first):
            return await self._last_opening(engine, resp, frames, first)
        return _error_frame(resp, first) or Begun(resp, frames, first)

    async def _last_opening(
        self, engine: Engine, resp: H1Response, frames: AsyncIterator[bytes], first: bytes
    ) -> UpstreamResponse:
        """The last engine's Responses stream, read past its opening events. One that went
        away before its first event past them is vLLM refusing a field it checks only as
        generation starts (or the engine killed while the request waited): the 400
        `engine_refused`, not a 200 whose opening events end in an `error` event, which the
        SDK's `responses.stream()` ended quietly on."""
        begun = await self._past_opening(engine, resp, frames, first)
        if begun is not None:
            return begun
        refused = error_body(REFUSED, "invalid_request_error", code="engine_refused")
        return Read(resp, orjson.dumps(refused), status=400, content_type="application/json")

    async def _past_opening(
        self, engine: Engine, resp: H1Response, frames: AsyncIterator[bytes], first: bytes
    ) -> UpstreamResponse | None:
        """A Responses API stream, read past its opening events (sent as vLLM takes the
        request); None when it ended before its first event past them: an engine killed while
        the request waited in its queue (taken for a refusal of a field, the request failed
        while the model's other engines were free), or vLLM refusing a field it checks only as
        generation starts. Either way nothing was generated, and the request may go to another
        engine: no step towards this one's ejection (a refusal is the request's, and the next
        engine says the same; the last one's is answered as such, RelayResponse)."""
        read = await self._looked_at(engine, resp, past_opening(frames, first))
        if read is None:
            resp.close()
            self._metrics.upstream_errors.labels(engine.url, "never_began").inc()
            return None
        head, failed = read
        return Begun(resp, frames, head, failed)

    async def _looked_at(
        self, engine: Engine, resp: UpstreamResponse, read: Awaitable[_T]
    ) -> _T | None:
        """`read` of an answer before it is handed on: None when the engine broke off (its
        failure counted, the answer closed)."""
        try:
            return await _kept(engine, resp, read)
        except UpstreamBroken as exc:
            self._failure(engine, exc.kind, exc.cause)
            return None


async def _kept(engine: Engine, resp: UpstreamResponse, read: Awaitable[_T]) -> _T:
    """`read` of an answer before it is handed on. Broken off (UpstreamBroken), the answer is
    closed; cancelled meanwhile (the client left) or failed otherwise, the engine's count is
    given back too, which the caller would have kept."""
    try:
        return await read
    except UpstreamBroken:
        resp.close()
        raise
    except BaseException:
        resp.close()
        engine.done()
        raise


def _error_frame(resp: H1Response, first: bytes) -> Read | None:
    """A stream whose first frame is an error (vLLM's engine core gone, a refusal it makes
    only as it generates) as the plain answer of that error's status, its body the frame's
    JSON (None: not an error frame). The stream is closed: vLLM sends nothing after it but
    its end."""
    if not first.startswith(b'data: {"error"'):
        return None
    data = first[6:].split(b"\n", 1)[0].rstrip(b"\r")
    resp.close()
    return Read(resp, data, status=stream_error_status(data), content_type="application/json")


def bad_answer(metrics: Metrics, engine: Engine, what: str) -> None:
    """An answer the OpenAI API never gives: counted, and a step towards the engine's
    ejection."""
    metrics.upstream_errors.labels(engine.url, "bad_answer").inc()
    engine.record_failure("bad_answer", what)


def odd(resp: H1Response) -> str | None:
    """What makes an engine's answer one the gateway cannot pass on (None: nothing): a status
    the OpenAI API never answers (2xx but 200, 3xx, 101), relayed with its status and a JSON
    body, broke the client's connection (a 204 or 304 has no body: the body was read as the
    next answer) or an SDK took it for a success; a body encoded (gzip) reached the client
    as a 200 `application/json` it could not read, and was billed nothing."""
    if resp.status != 200 and resp.status < 400:
        return f"HTTP {resp.status}"
    if resp.content_encoding:
        return f"a body in content-encoding {resp.content_encoding!r}"
    return None
