"""The Responses API through the relay, against an in-memory engine: event frames reach the
client byte for byte, the proxy reports the engine's usage and the response id, a cut stream
ends with one `error` event, and a body is passed on as it is (gateway/proxy/events.py)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.metering.usage import Usage
from gateway.proxy.call import ProxyCall
from gateway.proxy.events import ResponseEvents
from gateway.proxy.outcome import Outcome
from gateway.proxy.sse import FrameSplitter
from gateway.routing.engines import Engine, ModelPool
from tests.support.fake_upstream import FakeResponse, FakeUpstream, broken, run_proxy

RID = "resp_0123456789abcdef"
USAGE: Any = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 8, "input_tokens_per_turn": [12]},
    "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 0, "output_tokens_per_turn": [3]},
    "total_tokens": 15,
}


def response(status: str, usage: Any = None) -> dict[str, Any]:
    return {"id": RID, "object": "response", "model": "m", "status": status, "usage": usage}


def event(kind: str, seq: int, **fields: Any) -> bytes:
    """One frame as vLLM writes it: `event:` line, then the compact JSON data line."""
    data = orjson.dumps({**fields, "sequence_number": seq, "type": kind})
    return f"event: {kind}\ndata: ".encode() + data + b"\n\n"


CREATED = event("response.created", 0, response=response("in_progress"))
DELTAS = [event("response.output_text.delta", i + 1, delta=t) for i, t in enumerate("abc")]
COMPLETED = event("response.completed", 4, response=response("completed", USAGE))


ESTIMATE = 21  # the input tokens the API layer estimated at admission


def stream_call(pool: ModelPool) -> ProxyCall:
    return ProxyCall("responses", pool, b"{}", True, responses=True, input_estimate=ESTIMATE)


def body_call(pool: ModelPool) -> ProxyCall:
    return ProxyCall("responses", pool, b"{}", False, responses=True)


async def test_a_stream_reaches_the_client_unchanged_and_reports_usage_and_id() -> None:
    steps: list[Any] = [CREATED, *DELTAS, COMPLETED]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.status == 200
    assert run.body == b"".join(steps)  # event lines kept, no [DONE] added, no error appended
    assert (run.result.outcome, run.result.status) == (Outcome.OK, 200)
    assert run.result.usage == Usage(12, 3, 8)
    assert run.result.response_id == RID


async def test_frames_split_anywhere_are_relayed_whole() -> None:
    raw = CREATED + b"".join(DELTAS) + COMPLETED
    steps: list[Any] = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.body == raw
    assert run.result.usage == Usage(12, 3, 8)


async def test_a_stream_cut_midway_ends_with_one_error_event_and_bills_what_was_seen() -> None:
    steps: list[Any] = [CREATED, DELTAS[0], broken()]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    frames = FrameSplitter().feed(run.body)
    assert frames[:2] == [CREATED, DELTAS[0]]
    assert len(frames) == 3
    assert frames[2].startswith(b"event: error\ndata: ")
    error = orjson.loads(frames[2].split(b"data: ", 1)[1])
    assert (error["type"], error["code"], error["sequence_number"]) == (
        "error",
        "engine_disconnected",
        2,
    )
    assert run.result.outcome == Outcome.ENGINE_ERROR
    # vLLM reports usage only at the end: the input as estimated, one token per delta seen
    assert run.result.usage == Usage(ESTIMATE, 1)


async def test_a_stream_the_client_left_bills_the_deltas_relayed_so_far() -> None:
    steps: list[Any] = [CREATED, *DELTAS, 5.0, COMPLETED]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call, leave_after_s=0.2)
    assert run.result.outcome == Outcome.CLIENT_DISCONNECTED
    assert run.result.usage == Usage(ESTIMATE, 3)


async def test_a_stream_cut_before_it_started_bills_nothing() -> None:
    steps: list[Any] = [broken()]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.result.usage is None


async def test_a_stream_that_ends_without_a_terminal_event_is_cut() -> None:
    steps: list[Any] = [CREATED, *DELTAS]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.body.endswith(b"\n\n")
    assert b"event: error\n" in run.body
    assert run.result.outcome == Outcome.ENGINE_ERROR


async def test_an_engine_error_event_ends_the_stream_as_the_engine_sent_it() -> None:
    failure = event("error", 2, code="InternalServerError", message="boom", param=None)
    steps: list[Any] = [CREATED, DELTAS[0], failure]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.body == CREATED + DELTAS[0] + failure
    # vLLM's own failure midway (it was recorded ok): billed what was seen, as a cut stream
    assert (run.result.outcome, run.result.status) == (Outcome.ENGINE_ERROR, 200)
    assert run.result.usage == Usage(ESTIMATE, 1)


async def test_a_body_is_passed_on_as_it_is_with_its_usage_and_id() -> None:
    body = orjson.dumps({**response("completed", USAGE), "text": None, "user": None})
    answer = FakeResponse(200, "application/json", [body])
    run = await run_proxy(FakeUpstream(answer), body_call)
    assert run.body == body  # nulls the chat normaliser would drop are kept
    assert run.result.usage == Usage(12, 3, 8)
    assert run.result.response_id == RID


async def test_a_pinned_call_goes_to_its_engine_with_its_method_and_path() -> None:
    upstream = FakeUpstream(FakeResponse(200, "application/json", [b"{}"]))
    home = Engine("http://home")

    def pinned(pool: ModelPool) -> ProxyCall:
        path = f"/v1/responses/{RID}"
        route = "responses/{id}"
        return ProxyCall(
            route, pool, b"", False, responses=True, method="GET", path=path, engines=[home]
        )

    run = await run_proxy(upstream, pinned)
    assert upstream.requests == [("GET", f"/v1/responses/{RID}", "http://home")]
    assert run.result.engine == "http://home"
    assert home.inflight == 0


def test_the_filter_notes_the_id_of_the_first_created_event_only() -> None:
    events = ResponseEvents()
    assert events(CREATED) is CREATED
    other = event("response.created", 9, response={**response("x"), "id": "resp_other"})
    events(other)
    assert events.response_id == RID
    assert not events.finished
    events(COMPLETED)
    assert events.finished
