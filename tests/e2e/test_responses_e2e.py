"""The Responses API against a real vLLM engine through the gateway, with the unmodified
`openai` client: plain and streamed answers, a conversation continued by previous_response_id
over three turns, and usage records that match the usage vLLM reported to the client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any, cast

import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from tests.e2e.conftest import CHAT, E2E
from tests.e2e.metering import MAX_ABANDON_GAP, LedgerView, new_rid, settled_vllm_tokens

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def _events(stream: AsyncIterator[ResponseStreamEvent]) -> list[ResponseStreamEvent]:
    return [event async for event in stream]


def _completed(events: list[ResponseStreamEvent]) -> Response:
    assert isinstance(events[0], ResponseCreatedEvent)
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent)
    assert last.response.id == events[0].response.id
    return last.response


def _tokens(response: Any) -> tuple[int, int]:
    assert response.usage is not None
    return response.usage.input_tokens, response.usage.output_tokens


async def test_plain_and_streamed_responses_are_metered_as_vllm_counted(
    oai: openai.AsyncOpenAI, ledger: LedgerView
) -> None:
    before = await ledger.count()
    plain = await oai.responses.create(
        model=CHAT, input="What is the capital of France?", max_output_tokens=16
    )
    assert plain.status in ("completed", "incomplete")
    assert plain.output_text
    stream = await oai.responses.create(
        model=CHAT, input="Name three colours.", max_output_tokens=16, stream=True
    )
    events = await _events(stream)
    streamed = _completed(events)
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == streamed.output_text
    records = await ledger.new_since(before, 2)
    assert [(r.route, r.stream, r.outcome) for r in records] == [
        ("responses", False, "ok"),
        ("responses", True, "ok"),
    ]
    assert [(r.prompt_tokens, r.completion_tokens) for r in records] == [
        _tokens(plain),
        _tokens(streamed),
    ]


async def test_a_conversation_continues_over_three_turns(
    oai: openai.AsyncOpenAI, ledger: LedgerView
) -> None:
    before = await ledger.count()
    first = await oai.responses.create(
        model=CHAT, input="My name is Ada. Say hello.", max_output_tokens=12
    )
    second = await oai.responses.create(
        model=CHAT,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=12,
    )
    stream = await oai.responses.create(
        model=CHAT,
        input="Say it once more.",
        previous_response_id=second.id,
        max_output_tokens=12,
        stream=True,
    )
    third = _completed(await _events(stream))
    turns = [first, second, third]
    assert [t.previous_response_id for t in turns] == [None, first.id, second.id]
    for earlier, later in itertools.pairwise(turns):
        # vLLM re-reads the whole conversation: earlier input and output are input now
        assert _tokens(later)[0] > sum(_tokens(earlier))
    fetched = await oai.responses.retrieve(third.id)
    assert (fetched.id, fetched.output_text) == (third.id, third.output_text)
    records = await ledger.new_since(before, 4)
    assert [(r.prompt_tokens, r.completion_tokens) for r in records[:3]] == [
        _tokens(t) for t in turns
    ]
    assert (records[3].route, records[3].prompt_tokens, records[3].completion_tokens) == (
        "responses/{id}",
        0,
        0,
    )


def _without_ids(value: Any) -> Any:
    """A Responses body without what differs between two runs of one request."""
    if isinstance(value, dict):
        unique = ("id", "call_id", "created_at", "completed_at")
        return {k: _without_ids(v) for k, v in value.items() if k not in unique}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


async def test_a_plain_response_is_the_body_vllm_answers_itself(e2e: E2E) -> None:
    """The gateway asks vLLM for a plain response as a stream (to meter an abandoned one);
    what the client gets is the body vLLM's non-streaming path answers."""
    body: dict[str, Any] = {"model": CHAT, "input": "Name three colours.", "temperature": 0}
    body["max_output_tokens"] = 12
    async with e2e.http.post(f"{e2e.engines.chat}/v1/responses", json=body) as resp:
        assert resp.status == 200
        direct = await resp.json()
    async with e2e.http.post(f"{e2e.gateway}/v1/responses", json=body, headers=e2e.auth) as resp:
        assert (resp.status, resp.content_type) == (200, "application/json")
        through = await resp.json()
    assert through["id"].startswith("resp_")
    assert _without_ids(through) == _without_ids(direct)


async def test_a_required_tool_call_has_the_arguments_vllm_answers_itself(e2e: E2E) -> None:
    """With `tool_choice` "required" vLLM's plain answer writes the call's arguments again
    (`{"city": "paris"}`) where its stream has the model's text (`{\n    "city" : "paris"\n}`):
    the gateway's plain answer, assembled from the stream, was the model's text (found
    2026-12-07)."""
    tool = {"type": "function", "name": "weather", "strict": True}
    tool["parameters"] = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    body: dict[str, Any] = {"model": CHAT, "input": "What is the weather in Paris?"}
    body.update(tools=[tool], tool_choice="required", max_output_tokens=60, temperature=0)
    async with e2e.http.post(f"{e2e.engines.chat}/v1/responses", json=body) as resp:
        assert resp.status == 200
        direct = await resp.json()
    async with e2e.http.post(f"{e2e.gateway}/v1/responses", json=body, headers=e2e.auth) as resp:
        assert resp.status == 200
        through = await resp.json()
    calls = [item for item in direct["output"] if item["type"] == "function_call"]
    assert calls
    assert all("\n" not in call["arguments"] for call in calls)  # written again
    assert _without_ids(through) == _without_ids(direct)


async def test_a_plain_response_abandoned_is_billed_what_vllm_generated(
    e2e: E2E, ledger: LedgerView
) -> None:
    """vLLM aborts a non-streaming response whose client left and reports no usage: it used
    to be billed 0 tokens."""
    vllm_before = await settled_vllm_tokens(e2e)
    before = await ledger.count()
    rid = new_rid("plain-response-abandoned")
    body: dict[str, Any] = {"model": CHAT, "input": "Write a very long story about a dragon."}
    body |= {"temperature": 0, "max_output_tokens": 1500, "ignore_eos": True}
    headers = {**e2e.auth, "x-request-id": rid}
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(2):
            await e2e.http.post(f"{e2e.gateway}/v1/responses", json=body, headers=headers)
    await e2e.wait_running(0)
    records = await ledger.new_since(before, 1)
    assert [r.request_id for r in records] == [rid]
    record = records[0]
    generated = (await settled_vllm_tokens(e2e) - vllm_before).generation
    assert (record.route, record.stream, record.outcome) == (
        "responses",
        False,
        "client_disconnected",
    )
    assert 0 < record.completion_tokens < 1500
    assert abs(generated - record.completion_tokens) <= MAX_ABANDON_GAP
    assert record.prompt_tokens > 0  # estimated at admission, as for an abandoned stream


# A field vLLM checks only as generation starts (its maximum is 20)
TOO_MANY_LOGPROBS: Any = {
    "model": CHAT,
    "input": "hi",
    "max_output_tokens": 3,
    "top_logprobs": 30,
    "include": ["message.output_text.logprobs"],
}


async def test_a_field_vllm_refuses_only_as_generation_starts_is_a_400(
    oai: openai.AsyncOpenAI,
) -> None:
    """vLLM checks top_logprobs against its maximum (20) only when generation starts, and drops
    a stream it has begun: a plain response asked as a stream is asked again unstreamed, and
    its 400 reaches the client (not a 502, which the SDK would retry)."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.responses.create(**TOO_MANY_LOGPROBS)
    assert "top_logprobs of 30, which is greater than max allowed: 20" in info.value.message
    assert info.value.param == "top_logprobs"  # (vLLM names its own `logprobs`)
    with pytest.raises(openai.BadRequestError) as info:
        await oai.responses.create(model=CHAT, input="hi", max_output_tokens=0)
    assert info.value.param == "max_output_tokens"  # (vLLM names its own `max_tokens`)
    assert "max_output_tokens must be at least 1, got 0" in info.value.message
    assert " max_tokens" not in info.value.message


async def test_a_stream_vllm_refuses_as_generation_starts_leaves_the_engine_up(
    oai: openai.AsyncOpenAI, e2e: E2E, ledger: LedgerView
) -> None:
    """vLLM drops such a stream after its opening events: three of them used to eject the
    engine (three failures in a row), one tenant's bad field taking it from everyone. And the
    client got a 200 whose events ended in an `engine_refused` error event, which the SDK's
    `responses.stream()` ended on quietly: nothing had reached it, and it is that 400."""
    before = await ledger.count()
    for _ in range(3):
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.responses.create(**TOO_MANY_LOGPROBS, stream=True)
        assert refused.value.code == "engine_refused"
        assert "without 'stream'" in refused.value.message
    headers = {"authorization": "Bearer e2e-admin-token-0123456789"}
    async with e2e.http.get(f"{e2e.gateway}/admin/v1/engines", headers=headers) as resp:
        engines = {engine["url"]: engine for engine in (await resp.json())["data"]}
    assert engines[e2e.engines.chat]["state"] == "up"
    assert engines[e2e.engines.chat]["consecutive_failures"] == 0
    records = (await ledger.new_since(before, 3))[-3:]  # (an earlier test's may come late)
    assert [(r.outcome, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("rejected", 0, 0)
    ] * 3


async def test_a_malformed_input_item_is_named(oai: openai.AsyncOpenAI) -> None:
    """vLLM lists 234 complaints, the first that `input` is not a string."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.responses.create(
            model=CHAT, input=cast(Any, [{"role": "user", "content": 5}]), max_output_tokens=3
        )
    assert info.value.param == "input[0].content"


async def test_a_json_schema_format_without_its_name_is_named(oai: openai.AsyncOpenAI) -> None:
    """vLLM's first complaint is the plain-text branch: "Input should be 'text'" of
    text.format.type, which the client had right (json_schema)."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.responses.create(
            model=CHAT,
            input="hi",
            max_output_tokens=3,
            text=cast(Any, {"format": {"type": "json_schema", "schema": {"type": "object"}}}),
        )
    assert info.value.param == "text.format.name"
    assert info.value.message.endswith("Missing required parameter: 'text.format.name'.")
