"""The Responses API's event streams, relayed as the engine sends them.

vLLM frames every event as `event: <type>` + `data: <json>` and ends the stream with a terminal
event instead of `data: [DONE]`. The relay passes each frame on byte for byte (the Responses
API has no `stream_options`, so nothing is spliced in or cut out) and notes on the way:
the response's id (in `response.created`, to route its follow-ups to this engine), its usage
(in the terminal event's `response`: `input_tokens`, `output_tokens`, cached tokens), and
whether the stream finished. A stream that breaks off gets one `error` event, the Responses
API's own way of saying so, numbered after the last event the client saw.

vLLM reports a response's usage only in its terminal event. A stream that ends before it (the
client left, the engine broke off) is billed what the gateway saw: one output token per delta
event and the input as estimated at admission. vLLM sends a delta event per generated token for
plain text; a tool call's arguments and text whose characters span tokens come in fewer events,
so those are under-billed when cut (README, "Responses API").
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial

import orjson

from gateway.errors import ApiError, InvalidRequest
from gateway.metering.usage import Usage, find_usage, parse_usage
from gateway.proxy.sse import frame_data, frame_event

# OpenAI's terminal events (vLLM 0.32 sends response.completed, also for an incomplete
# response), and the error event vLLM sends when generation fails midway.
TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
ERROR = b"error"
# What vLLM sends before it hands the request to the engine (whose checks may still refuse it).
OPENING = frozenset({b"response.created", b"response.in_progress"})
# Events that carry generated text, one per token of plain text (see the module docstring).
DELTAS = frozenset(
    {
        b"response.output_text.delta",
        b"response.reasoning_text.delta",
        b"response.reasoning_summary_text.delta",
        b"response.function_call_arguments.delta",
        b"response.refusal.delta",
    }
)
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


class ResponseEvents:
    """A frame filter for relay_stream (see gateway/proxy/stream.py) that changes nothing.
    `input_estimate`: the input tokens estimated at admission (billed if the stream ends
    before vLLM reports its usage)."""

    __slots__ = (
        "before_end",
        "began",
        "deltas",
        "engine_error",
        "finished",
        "input_estimate",
        "last",
        "note",
        "refused",
        "reported",
        "response_id",
    )

    def __init__(
        self, input_estimate: int = 0, note: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        self.input_estimate = input_estimate
        self.note = note  # a stored response's id noted (ProxyCall.stored), before its end
        self.before_end: Callable[[], Awaitable[None]] | None = None
        self.finished = False
        self.response_id: str | None = None
        self.reported: Usage | None = None  # the terminal event's usage
        self.deltas = 0
        self.last = b""  # the last event's payload (for the next sequence number)
        self.began = False  # an event past the opening ones: vLLM has begun generating
        self.refused = False  # dropped before it began (refusal)
        self.engine_error: int | None = None  # 500: the engine's own `error` event ended it

    @property
    def usage(self) -> Usage | None:
        """vLLM's report; before it, what was seen (nothing if generation never started)."""
        if self.reported is not None or self.response_id is None or self.refused:
            return self.reported
        return Usage(self.input_estimate, self.deltas)

    def __call__(self, frame: bytes) -> bytes:
        event = frame_event(frame)
        data = frame_data(frame)
        if data is None:
            return frame
        self.last = data
        if event not in OPENING:
            self.began = True
        if event in DELTAS:
            self.deltas += 1
        elif event == b"response.created" and self.response_id is None:
            self.response_id = created_id(data)
        elif event in TERMINAL:
            span = find_usage(data)
            self.reported = None if span is None else parse_usage(data[span[1] : span[2]])
            self.finished = True
            if self.note is not None and self.response_id is not None:  # (stored by now)
                self.before_end = partial(self.note, self.response_id)
        elif event == ERROR:  # vLLM's generation failed midway (its GenerationError)
            self.finished = True
            self.engine_error = 500
        return frame

    def release(self) -> bytes:
        return b""  # nothing is ever held back

    def refusal(self) -> ApiError | None:
        """The error for a stream the engine dropped after its opening events, before it began
        generating: vLLM's way of refusing a field it checks only then (top_logprobs over 20, a
        grammar it cannot compile, token ids outside the vocabulary), whose reason a begun
        stream cannot carry. Nothing was generated: nothing is billed. None once it began."""
        if self.began:
            return None
        self.refused = True
        return InvalidRequest(REFUSED, code="engine_refused")

    def failure(self, error: ApiError) -> bytes:
        """The `error` event that ends a stream the engine broke off."""
        found = _SEQUENCE.search(self.last)
        event = {
            "type": "error",
            "code": error.code,
            "message": error.message,
            "param": None,
            "sequence_number": int(found.group(1)) + 1 if found else 0,
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


# A stream vLLM dropped after its opening events, before it began to generate (refusal)
REFUSED = (
    "The engine refused the request as generation was to start (vLLM checks top_logprobs, "
    "grammars and token ids only then); send it without 'stream' to have the engine name the "
    "field."
)


def created_id(data: bytes) -> str | None:
    """The response id a `response.created` event (or a Responses body's `response`) names."""
    return body_id(event_response(data))


def event_response(data: bytes) -> object:
    """The `response` member of an event's JSON data (None: it has none, or is not JSON)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event.get("response") if isinstance(event, dict) else None


def body_id(body: object) -> str | None:
    """The `id` of a parsed Responses object, if it is one."""
    if not isinstance(body, dict) or body.get("object") != "response":
        return None
    found = body.get("id")
    return found if isinstance(found, str) and found else None


def response_id_of(body: bytes) -> str | None:
    """The id of a non-streaming Responses body (parsed once, when the answer is complete)."""
    try:
        return body_id(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None
