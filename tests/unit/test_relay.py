"""The relay against an in-memory engine: what the client receives and the neutral result the
proxy reports, for streams, collected answers, failures and a client that leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.errors import ServiceUnavailable
from gateway.metering.stream_options import UsageWanted
from gateway.metering.usage import Usage
from gateway.proxy.call import ProxyCall
from gateway.proxy.outcome import Outcome
from gateway.routing.engines import ModelPool
from tests.support.fake_upstream import FakeResponse, FakeUpstream, broken, frame, run_proxy

HEAD: Any = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
DONE = b"data: [DONE]\n\n"


def delta(text: str, tokens: int, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
    return frame({**HEAD, "choices": [choice], "usage": usage})


FINAL = frame({**HEAD, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})


def stream_call(pool: ModelPool) -> ProxyCall:
    return ProxyCall("chat/completions", pool, b"{}", True, usage_wanted=UsageWanted(True, False))


def collected_call(pool: ModelPool) -> ProxyCall:
    return ProxyCall("chat/completions", pool, b"{}", False, collect={"model": "m"})


async def test_a_stream_is_relayed_and_reported_with_its_usage() -> None:
    steps: list[Any] = [delta("Hel", 1), delta("lo", 2, "stop"), FINAL, DONE]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.status == 200
    payloads = [p for p in run.body.split(b"\n\n") if p]
    assert payloads[-1] == b"data: [DONE]"
    assert b'"usage"' not in payloads[0]  # the client asked for the final usage only
    assert (run.result.engine, run.result.status, run.result.outcome) == (
        "http://engine",
        200,
        Outcome.OK,
    )
    assert run.result.usage == Usage(5, 2)
    assert run.result.ttft_ms is not None
    assert run.engine.inflight == 0


async def test_a_stream_cut_midway_ends_with_one_error_frame_and_is_billed_what_it_sent() -> None:
    steps: list[Any] = [delta("Hel", 1), delta("lo", 2), broken()]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    frames = [f for f in run.body.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    error = orjson.loads(frames[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "engine_disconnected"
    assert run.result.outcome == Outcome.ENGINE_ERROR
    assert run.result.usage == Usage(5, 2)


async def test_a_collected_answer_is_one_json_body() -> None:
    steps: list[Any] = [delta("Hel", 1), delta("lo", 2, "stop"), FINAL, DONE]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), collected_call)
    assert run.status == 200
    body = orjson.loads(run.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["usage"]["completion_tokens"] == 2
    assert run.result.usage == Usage(5, 2)


async def test_a_client_that_leaves_closes_the_engine_request_and_is_billed_so_far() -> None:
    steps: list[Any] = [delta("a", 1), delta("b", 2), 5.0, delta("c", 3), FINAL, DONE]
    response = FakeResponse(steps=steps)
    run = await run_proxy(FakeUpstream(response), collected_call, leave_after_s=0.05)
    assert (run.result.status, run.result.outcome) == (499, Outcome.CLIENT_DISCONNECTED)
    assert run.result.usage == Usage(5, 2)
    assert response.closed  # the engine sees its connection go and aborts
    assert run.engine.inflight == 0


async def test_no_engine_reachable_is_a_503_and_reports_no_engine() -> None:
    unavailable = ServiceUnavailable("none", code="engine_unavailable")
    run = await run_proxy(FakeUpstream(unavailable), collected_call)
    assert run.status == 503
    assert orjson.loads(run.body)["error"]["code"] == "engine_unavailable"
    assert (run.result.engine, run.result.outcome) == (None, Outcome.ENGINE_UNAVAILABLE)


async def test_an_engine_error_body_is_normalised_and_reported_as_rejected() -> None:
    body = orjson.dumps({"error": {"message": "bad", "type": "BadRequestError", "code": 400}})
    answer = FakeResponse(400, "application/json", [body])
    run = await run_proxy(FakeUpstream(answer), collected_call)
    assert run.status == 400
    error = orjson.loads(run.body)["error"]
    assert (error["message"], error["code"]) == ("bad", None)
    assert run.result.outcome == Outcome.REJECTED
    assert run.result.usage is None


async def test_a_stream_whose_end_comes_after_its_last_frame_is_not_a_disconnect() -> None:
    """vLLM ends the chunked body a moment after `[DONE]`: the client has the whole stream by
    then, and the disconnect uvicorn reports after the last byte is no client leaving."""
    steps: list[Any] = [delta("Hi", 1, "stop"), FINAL + DONE, 0.2]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), stream_call)
    assert run.body.endswith(DONE)
    assert (run.result.status, run.result.outcome) == (200, Outcome.OK)
    assert run.result.usage == Usage(5, 2)


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


RESPONSE: Any = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
OPENING = [
    event("response.created", {"response": RESPONSE, "sequence_number": 0}),
    event("response.in_progress", {"response": RESPONSE, "sequence_number": 1}),
]
DONE_RESPONSE: Any = {
    **RESPONSE,
    "status": "completed",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi there"}]}],
    "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
}
COMPLETED = event("response.completed", {"response": DONE_RESPONSE, "sequence_number": 5})


def text_delta(text: str, number: int) -> bytes:
    return event("response.output_text.delta", {"delta": text, "sequence_number": number})


def plain_response_call(pool: ModelPool) -> ProxyCall:
    """A non-streaming response, asked of the engine as a stream (collect_events)."""
    return ProxyCall(
        "responses",
        pool,
        b'{"stream":true}',
        False,
        responses=True,
        input_estimate=6,
        unstreamed=b"{}",
    )


async def test_a_plain_response_is_the_final_events_response() -> None:
    steps: list[Any] = [*OPENING, text_delta("Hi", 2), text_delta(" there", 3), COMPLETED]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), plain_response_call)
    assert run.status == 200
    assert orjson.loads(run.body) == DONE_RESPONSE
    assert (run.result.outcome, run.result.usage) == (Outcome.OK, Usage(7, 2))
    assert run.result.response_id == "resp_1"


async def test_a_plain_response_abandoned_is_billed_its_estimate_and_deltas() -> None:
    steps: list[Any] = [*OPENING, text_delta("Hi", 2), text_delta(" the", 3), 5.0, COMPLETED]
    response = FakeResponse(steps=steps)
    run = await run_proxy(FakeUpstream(response), plain_response_call, leave_after_s=0.05)
    assert (run.result.status, run.result.outcome) == (499, Outcome.CLIENT_DISCONNECTED)
    assert run.result.usage == Usage(6, 2)
    assert response.closed


async def test_a_plain_response_whose_stream_never_began_is_asked_again_unstreamed() -> None:
    """vLLM checks some fields only as generation starts; a stream it has begun is then
    dropped after its opening events. Asked unstreamed, it answers the 400 naming the field,
    and the engine is not taken for failing."""
    refusal = orjson.dumps(
        {"error": {"message": "top_logprobs too large", "param": "logprobs", "code": 400}}
    )
    upstream = FakeUpstream(
        FakeResponse(steps=[*OPENING, broken()]),
        FakeResponse(400, "application/json", [refusal]),
    )
    run = await run_proxy(upstream, plain_response_call)
    assert upstream.bodies == [b'{"stream":true}', b"{}"]
    assert run.status == 400
    assert orjson.loads(run.body)["error"]["message"] == "top_logprobs too large"
    assert (run.result.outcome, run.result.usage) == (Outcome.REJECTED, None)
    assert run.engine.health.consecutive_failures == 0
    assert run.engine.inflight == 0


async def test_a_plain_response_cut_after_it_began_is_a_502_billed_nothing() -> None:
    """The client gets a 502 and no part of the answer: the tokens generated (6 + 1) are not
    its to pay (an SDK retries the request)."""
    steps: list[Any] = [*OPENING, text_delta("Hi", 2), broken()]
    upstream = FakeUpstream(FakeResponse(steps=steps))
    run = await run_proxy(upstream, plain_response_call)
    assert len(upstream.bodies) == 1  # never sent twice once generation began
    assert run.status == 502
    assert orjson.loads(run.body)["error"]["code"] == "engine_disconnected"
    assert run.result.usage is None


def response_stream_call(pool: ModelPool) -> ProxyCall:
    return ProxyCall("responses", pool, b"{}", True, responses=True, input_estimate=6)


async def test_a_response_stream_dropped_before_it_began_is_a_refusal_not_an_engine_failure() -> (
    None
):
    """vLLM drops a Responses stream it refuses as generation starts: the client gets an error
    event saying so, nothing is billed, and the engine takes no step towards its ejection
    (three such requests used to eject it)."""
    upstream = FakeUpstream(*(FakeResponse(steps=[*OPENING, broken()]) for _ in range(3)))
    for _ in range(3):
        run = await run_proxy(upstream, response_stream_call)
        events = [e for e in run.body.split(b"\n\n") if e]
        assert events[-1].startswith(b"event: error\n")
        error = orjson.loads(events[-1].split(b"data: ", 1)[1])
        assert (error["code"], error["sequence_number"]) == ("engine_refused", 2)
        assert (run.result.outcome, run.result.usage) == (Outcome.REJECTED, None)
        assert run.engine.health.consecutive_failures == 0


async def test_a_response_stream_cut_after_it_began_is_the_engines_failure() -> None:
    steps: list[Any] = [*OPENING, text_delta("Hi", 2), broken()]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), response_stream_call)
    error = orjson.loads(run.body.rsplit(b"data: ", 1)[1])
    assert error["code"] == "engine_disconnected"
    assert (run.result.outcome, run.result.usage) == (Outcome.ENGINE_ERROR, Usage(6, 1))
    assert run.engine.health.consecutive_failures == 1


async def test_a_collected_answers_error_frame_names_the_routes_field() -> None:
    """vLLM refuses a prompt's out-of-vocabulary token id in the stream a plain completion is
    asked as: the 400 names `prompt`, as the same refusal of a plain request does."""
    refusal = orjson.dumps(
        {"error": {"message": "Token id 99999 is out of vocabulary", "code": 400}}
    )

    def call(pool: ModelPool) -> ProxyCall:
        return ProxyCall("completions", pool, b"{}", False, collect={"model": "m", "prompt": [1]})

    run = await run_proxy(FakeUpstream(FakeResponse(steps=[frame(orjson.loads(refusal))])), call)
    assert run.status == 400
    assert orjson.loads(run.body)["error"]["param"] == "prompt"


async def test_a_streams_error_frame_names_the_routes_field() -> None:
    """The same refusal in a client's own stream: its error frame named no field."""
    refusal = {"error": {"message": "Token id 99999 is out of vocabulary", "code": 400}}

    def call(pool: ModelPool) -> ProxyCall:
        return ProxyCall("completions", pool, b"{}", True)

    steps: list[Any] = [frame(refusal), b"data: [DONE]\n\n"]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), call)
    error_frame = run.body.split(b"\n\n")[0]
    assert orjson.loads(error_frame.removeprefix(b"data: "))["error"]["param"] == "prompt"


async def test_a_response_streams_time_to_first_token_waits_for_its_first_output() -> None:
    """vLLM sends response.created and response.in_progress before generating: the time to
    first token was taken at them (0.06 ms through the real engine)."""
    steps: list[Any] = [*OPENING, 0.1, text_delta("Hi", 2), COMPLETED]
    run = await run_proxy(FakeUpstream(FakeResponse(steps=steps)), response_stream_call)
    assert run.result.ttft_ms is not None
    assert run.result.ttft_ms >= 100


async def test_a_stream_the_engine_refused_with_an_error_frame_is_rejected() -> None:
    """vLLM refuses some fields of a stream it has begun with an error frame and [DONE] (an
    out-of-vocabulary logit_bias, a grammar it cannot compile): recorded `ok`, such a stream
    with no usage was charged its whole token reservation; rejected, it is charged none."""
    refusal = {"error": {"message": "Grammar error", "type": "BadRequestError", "code": 400}}
    run = await run_proxy(FakeUpstream(FakeResponse(steps=[frame(refusal), DONE])), stream_call)
    assert run.body.endswith(DONE)
    assert orjson.loads(run.body.split(b"\n\n")[0].removeprefix(b"data: "))["error"]["code"] is None
    assert (run.result.outcome, run.result.usage) == (Outcome.REJECTED, None)


async def test_a_client_that_leaves_after_the_engines_refusal_frame_is_still_rejected() -> None:
    """vLLM sends a grammar's refusal, then [DONE] once it is done with the request; the
    openai client raises at the error frame and closes: recorded client_disconnected, the
    refused stream was billed its estimated prompt. The refusal was its whole answer."""
    refusal = {"error": {"message": "Grammar error", "type": "BadRequestError", "code": 400}}
    steps: list[Any] = [frame(refusal), 0.5, DONE]
    upstream = FakeUpstream(FakeResponse(steps=steps))
    run = await run_proxy(upstream, stream_call, leave_after_s=0.05)
    assert b"Grammar error" in run.body
    assert (run.result.outcome, run.result.usage) == (Outcome.REJECTED, None)


async def test_a_grammar_the_engine_cannot_compile_names_the_field_it_came_from() -> None:
    """vLLM's grammar refusals name no field: the request's field (ProxyCall.grammar) is
    named, in a plain answer, a collected one and a stream's error frame."""
    refusal = {"error": {"message": "Grammar error: Invalid type: bogus", "code": 400}}
    body = orjson.dumps(refusal)

    def plain(pool: ModelPool) -> ProxyCall:
        return ProxyCall("chat/completions", pool, b"{}", False, grammar="response_format")

    def collected(pool: ModelPool) -> ProxyCall:
        return ProxyCall(
            "chat/completions", pool, b"{}", False, collect={"model": "m"}, grammar="tools"
        )

    def streamed(pool: ModelPool) -> ProxyCall:
        return ProxyCall("completions", pool, b"{}", True, grammar="structured_outputs.regex")

    answers = [
        (plain, FakeResponse(400, "application/json", [body])),
        (collected, FakeResponse(steps=[frame(refusal), DONE])),
        (streamed, FakeResponse(steps=[frame(refusal), DONE])),
    ]
    for call, response in answers:
        run = await run_proxy(FakeUpstream(response), call)
        error = orjson.loads(run.body.split(b"\n\n")[0].removeprefix(b"data: "))["error"]
        assert error["param"] == call(ModelPool("m", [])).grammar
        assert error["message"].startswith(f"Invalid value for '{error['param']}': Grammar")


async def test_a_response_stream_left_at_its_terminal_event_is_whole() -> None:
    """The SDK's `break` on response.completed closes the connection before vLLM ends its
    stream: recorded client_disconnected (499), the response's home was not remembered, and
    the stored response answered 404 for good. The client had the whole answer."""
    steps: list[Any] = [*OPENING, text_delta("Hi", 2), COMPLETED, 0.5]
    upstream = FakeUpstream(FakeResponse(steps=steps))
    run = await run_proxy(upstream, response_stream_call, leave_after_s=0.05)
    assert run.body.rstrip().endswith(b'"sequence_number":5}')
    assert (run.result.status, run.result.outcome) == (200, Outcome.OK)
    assert (run.result.response_id, run.result.usage) == ("resp_1", Usage(7, 2))


class _LateHeaders(FakeUpstream):
    """An engine whose answer begins 0.1 s after it was asked (vLLM renders the template,
    tokenises and fetches media before its 200; a failover or a wait for a connection too)."""

    async def open(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await super().open(*args, **kwargs)


async def test_time_to_first_token_counts_from_the_request() -> None:
    """It was counted from the engine's headers: 0.18 ms recorded for a first token the
    client waited 838 ms for."""
    cases: list[tuple[Any, list[Any]]] = [
        (stream_call, [delta("Hi", 1, "stop"), FINAL + DONE]),
        (collected_call, [delta("Hi", 1, "stop"), FINAL + DONE]),
        (response_stream_call, [*OPENING, text_delta("Hi", 2), COMPLETED]),
    ]
    for call, steps in cases:
        run = await run_proxy(_LateHeaders(FakeResponse(steps=steps)), call)
        assert run.result.ttft_ms is not None
        assert run.result.ttft_ms >= 100, call
