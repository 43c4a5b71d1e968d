"""The official openai client against the gateway in front of real vLLM engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from tests.e2e.conftest import CHAT, E2E, EMBED
from tests.e2e.metering import LedgerView, new_rid

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FRANCE: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def oai(e2e: E2E) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{e2e.gateway}/v1", api_key=e2e.key) as client:
        yield client


async def test_models_list(oai: openai.AsyncOpenAI) -> None:
    models = await oai.models.list()
    assert {m.id for m in models.data} == {CHAT, EMBED}


async def test_greedy_answer_names_paris(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model=CHAT, messages=FRANCE, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_a_session_id_renamed_within_the_tenant_is_taken_by_vllm(
    oai: openai.AsyncOpenAI,
) -> None:
    """The gateway sends vLLM its own id for a client's `session_id` (policy.session_id): the
    engine takes it, on chat and on the Responses API, and answers as without one."""
    extra = {"session_id": "agent-run-7"}
    reply = await oai.chat.completions.create(
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=12, extra_body=extra
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    answer = await oai.responses.create(
        model=CHAT, input=FRANCE, temperature=0, max_output_tokens=12, extra_body=extra
    )
    assert "Paris" in answer.output_text


async def test_stream_without_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=CHAT, messages=FRANCE, temperature=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_stream_with_include_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model=CHAT,
        messages=FRANCE,
        temperature=0,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_legacy_completions_with_max_tokens_stop_at_length(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.completions.create(
        model=CHAT, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4


async def test_chat_max_tokens_gives_length(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


async def test_unknown_model_raises_not_found(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await oai.chat.completions.create(model="gpt-nope", messages=FRANCE)
    assert info.value.code == "model_not_found"


async def test_embeddings_are_384_dimensional(oai: openai.AsyncOpenAI) -> None:
    result = await oai.embeddings.create(model=EMBED, input=["hello world", "bonjour"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0


async def test_engine_validation_error_passes_through_in_openai_shape(
    oai: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=10**6)
    assert info.value.status_code == 400
    assert "max_tokens" in info.value.message
    assert info.value.code is None or isinstance(info.value.code, str)


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"max_tokens": "ten"}, "max_tokens", "(got 'ten')"),
        ({"messages": ["hi"]}, "messages[0]", "valid dictionary"),
        (  # vLLM writes the null it got as 'None'
            {"messages": [{"role": "user", "content": None}]},
            "messages[0].content",
            "Input should be a valid string (got null)",
        ),
        ({"stop": list("abcde")}, "stop", "List should have at most 4 items"),  # (not "a string")
        ({"logprobs": 2}, "logprobs", "valid boolean"),  # (not top_logprobs, vLLM's `logprobs`)
    ],
)
async def test_a_body_vllm_refuses_names_the_field_as_openai_does(
    oai: openai.AsyncOpenAI, fields: dict[str, Any], param: str, needle: str
) -> None:
    """What the gateway's own checks leave to the engine: vLLM's pydantic report becomes one
    sentence naming the field, and `param` is spelled as OpenAI spells it."""
    body: dict[str, Any] = {"model": CHAT, "messages": FRANCE, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(**body)
    assert info.value.param == param
    assert f"- Invalid value for '{param}': " in info.value.message  # (after the SDK's prefix)
    assert needle in info.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 0}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
async def test_a_sampling_value_refused_names_the_field_the_client_sent(
    oai: openai.AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    """vLLM refuses the first two without a `param` ("n must be at least 1, got 0."), the
    third naming its own `logprobs`; the fourth is refused by the gateway (vLLM would name
    `max_tokens`): each names the field the client sent."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=CHAT, messages=FRANCE, **fields)
    assert info.value.param == param


BOGUS_SCHEMA: Any = {"type": "bogus"}


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        (
            "chat",
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": BOGUS_SCHEMA},
                }
            },
            "response_format",
        ),
        (
            "chat",
            {"extra_body": {"structured_outputs": {"json": BOGUS_SCHEMA}}},
            "structured_outputs.json",
        ),
        (
            "completions",
            {"extra_body": {"structured_outputs": {"regex": "(["}}},
            "structured_outputs.regex",
        ),
        (
            "responses",
            {"text": {"format": {"type": "json_schema", "name": "p", "schema": BOGUS_SCHEMA}}},
            "text.format",
        ),
    ],
)
async def test_a_grammar_vllm_cannot_compile_names_the_field_it_came_from(
    oai: openai.AsyncOpenAI, route: str, fields: dict[str, Any], param: str
) -> None:
    """vLLM refuses a schema or regex it cannot compile with 'Grammar error: ...' and no
    `param`, in a 400 or (a chat stream) an error frame as the stream's first: the client
    learns which field, and a stream's refusal is that 400 too (it was a 200 holding the frame,
    until 2026-12-06: nothing else had reached the client)."""
    with pytest.raises(openai.BadRequestError) as info:
        await _create(oai, route, fields)
    assert info.value.param == param
    assert f"Invalid value for '{param}': Grammar error" in info.value.message
    if route == "chat":
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(
                model=CHAT, messages=FRANCE, max_tokens=4, stream=True, **fields
            )
        assert refused.value.param == param
        assert f"Invalid value for '{param}': Grammar error" in refused.value.message


async def _create(oai: openai.AsyncOpenAI, route: str, fields: dict[str, Any]) -> object:
    if route == "chat":
        return await oai.chat.completions.create(
            model=CHAT, messages=FRANCE, max_tokens=4, **fields
        )
    if route == "completions":
        return await oai.completions.create(model=CHAT, prompt="x", max_tokens=4, **fields)
    return await oai.responses.create(model=CHAT, input="x", max_output_tokens=4, **fields)


async def test_a_guided_decoding_field_vllm_ignores_is_refused_and_its_successor_works(
    oai: openai.AsyncOpenAI,
) -> None:
    """vLLM 0.32 ignores `guided_choice` and its kin (a warning in its log): the answer would be
    free text. The gateway refuses them by name, and what its message says to use instead
    constrains the real engine's answer."""
    question: Any = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(
            model=CHAT, messages=question, max_tokens=8, extra_body={"guided_choice": ["yes", "no"]}
        )
    assert (info.value.param, info.value.code) == ("guided_choice", "unsupported_parameter")
    assert "'structured_outputs': {'choice'" in info.value.message
    reply = await oai.chat.completions.create(
        model=CHAT,
        messages=question,
        max_tokens=8,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["maybe", "never"]}},
    )
    assert reply.choices[0].message.content in ("maybe", "never")


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        (
            "chat/completions",
            {"functions": [{"name": "weather", "parameters": {"type": "object"}}]},
            "functions",
        ),
        ("chat/completions", {"function_call": {"name": "weather"}}, "function_call"),
        ("chat/completions", {"modalities": ["text", "audio"]}, "modalities[1]"),
        ("chat/completions", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ("chat/completions", {"web_search_options": {}}, "web_search_options"),
        ("completions", {"best_of": 3}, "best_of"),
        ("chat/completions", {"best_of": 3}, "best_of"),  # (vLLM 0.32's chat has none)
        ("responses", {"conversation": "conv_1"}, "conversation"),
    ],
)
async def test_a_field_vllm_would_drop_unread_is_refused_by_name(
    e2e: E2E, oai: openai.AsyncOpenAI, route: str, fields: dict[str, Any], param: str
) -> None:
    """vLLM answers these requests as if the field were not there (the first request, straight
    to the engine): the gateway refuses them by name instead. Should a vLLM upgrade start
    reading one, the first assertion fails, and the gateway should let it through."""
    body: dict[str, Any] = {"model": CHAT, **fields}
    if route == "chat/completions":
        body |= {"messages": FRANCE, "max_tokens": 2}
    elif route == "completions":
        body |= {"prompt": "x", "max_tokens": 2}
    else:
        body |= {"input": "x", "max_output_tokens": 2}
    async with e2e.http.post(f"{e2e.engines.chat}/v1/{route}", json=body) as direct:
        assert direct.status == 200, await direct.text()
    with pytest.raises(openai.BadRequestError) as info:
        await oai.post(f"/{route}", body=body, cast_to=object)
    assert (info.value.param, info.value.code) == (param, "unsupported_parameter")
    assert "is not supported" in info.value.message


@pytest.mark.parametrize(
    ("route", "body", "param", "needle"),
    [
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages",
            "Unsupported chat content part type: 'file'",
        ),
        (
            "responses",
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
            "Unsupported chat content part type: 'input_file'",
        ),
        (
            "chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                            }
                        ],
                    }
                ]
            },
            "messages",
            "is not a multimodal model",
        ),
    ],
)
async def test_a_content_part_vllm_refuses_names_the_prompts_field(
    oai: openai.AsyncOpenAI, route: str, body: dict[str, Any], param: str, needle: str
) -> None:
    """vLLM names `type` (no field of the request) or nothing: the client learns it is its
    prompt's content."""
    limit = "max_output_tokens" if route == "responses" else "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        await oai.post(f"/{route}", body={"model": CHAT, limit: 2, **body}, cast_to=object)
    assert info.value.param == param
    assert needle in info.value.message


async def test_a_prompt_over_the_context_is_context_length_exceeded(
    oai: openai.AsyncOpenAI,
) -> None:
    long: list[Any] = [{"role": "user", "content": "Paris is a city. " * 2500}]  # > 8,192 tokens
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=CHAT, messages=long, max_tokens=5)
    assert (info.value.code, info.value.param) == ("context_length_exceeded", "messages")
    assert "context length" in info.value.message


async def test_an_embedding_input_over_the_context_is_context_length_exceeded(
    oai: openai.AsyncOpenAI,
) -> None:
    """vLLM refuses a text too long for all-MiniLM-L6-v2's 256 tokens by its characters,
    naming its own `input_text`."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.embeddings.create(model=EMBED, input="hello " * 1000)
    assert (info.value.code, info.value.param) == ("context_length_exceeded", "input")
    assert "context length" in info.value.message


async def test_dimensions_a_model_cannot_give_is_a_400_naming_dimensions(
    oai: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.embeddings.create(model=EMBED, input="hello", dimensions=8)
    assert info.value.param == "dimensions"
    assert "Matryoshka" in info.value.message


async def test_a_token_id_outside_the_vocabulary_names_the_prompt(
    oai: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await oai.completions.create(model=CHAT, prompt=[1, 999999999], max_tokens=2)
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        await oai.embeddings.create(model=EMBED, input=[[1, 999999999]])
    assert info.value.param == "input"


async def test_an_empty_prompt_and_an_engine_bound_are_told_as_a_clients_errors(
    oai: openai.AsyncOpenAI,
) -> None:
    """Found by review: vLLM names no field for one empty prompt among several, and tells the
    client to set an environment variable of the engine's for a batch over its 1,024 prompts
    (within the gateway's own bound, 2,048) or an `n` over 16,384."""
    with pytest.raises(openai.BadRequestError) as info:
        await oai.completions.create(model=CHAT, prompt=["", "hi"], max_tokens=2)
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        await oai.completions.create(model=CHAT, prompt=["hi"] * 1025, max_tokens=1)
    assert info.value.param == "prompt"
    assert "1024" in info.value.message
    assert "VLLM_" not in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], n=16385, max_tokens=1
        )
    assert info.value.param == "n"
    assert "VLLM_" not in info.value.message


async def test_a_stream_vllm_refuses_with_an_error_frame_is_a_400_recorded_rejected(
    e2e: E2E, ledger: LedgerView
) -> None:
    """vLLM checks logit_bias against its vocabulary once the stream has begun: an error frame,
    then [DONE]. Recorded `ok`, it was charged its whole token reservation; and until
    2026-12-06 the client got a 200 with that frame, though nothing else had reached it: it is
    the 400 a plain request gets, naming the field."""
    rid = new_rid("stream-refused")
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body |= {"max_tokens": 3, "logit_bias": {"999999": 1}}
    before = await ledger.count()
    headers = {**e2e.auth, "x-request-id": rid}
    async with e2e.http.post(f"{e2e.gateway}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 400
        assert r.content_type == "application/json"
        error = orjson.loads(await r.read())["error"]
    assert "out-of-vocab" in error["message"], error
    assert (error["type"], error["param"]) == ("invalid_request_error", "logit_bias"), error
    records = [r for r in await ledger.new_since(before, 1) if r.request_id == rid]
    assert [(r.outcome, r.total_tokens) for r in records] == [("rejected", 0)]


async def test_binary_embeddings_are_refused_naming_encoding_format(
    oai: openai.AsyncOpenAI,
) -> None:
    """vLLM answers `bytes` with raw floats and their usage in a header the gateway did not
    relay: the client got floats labelled JSON and the ledger 0 tokens."""
    for encoding in ("bytes", "bytes_only"):
        with pytest.raises(openai.BadRequestError) as info:
            await oai.embeddings.create(
                model=EMBED, input="hi", extra_body={"encoding_format": encoding}
            )
        assert (info.value.param, info.value.code) == ("encoding_format", "unsupported_value")


async def test_vllm_nulls_that_break_strict_clients_are_removed(e2e: E2E) -> None:
    body = {"model": CHAT, "messages": FRANCE, "max_tokens": 3, "top_k": 1, "min_p": 0.0}
    async with e2e.http.post(
        f"{e2e.gateway}/v1/chat/completions", json=body, headers=e2e.auth
    ) as resp:
        assert resp.status == 200
        reply = orjson.loads(await resp.read())
    message = reply["choices"][0]["message"]
    assert message["content"]
    for forbidden in ("function_call", "annotations", "tool_calls"):
        assert message.get(forbidden, "absent") is not None
    assert reply["usage"].get("prompt_tokens_details", "absent") is not None
    assert reply["usage"].get("completion_tokens_details", "absent") is not None


async def test_cancelled_stream_frees_the_engine(oai: openai.AsyncOpenAI, e2e: E2E) -> None:
    stream = await oai.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=2000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 5:
            break
    await e2e.wait_running(1)
    await stream.close()
    await e2e.wait_running(0)


async def test_abandoned_non_stream_request_frees_the_engine(e2e: E2E) -> None:
    body = {"model": CHAT, "messages": FRANCE, "max_tokens": 2000, "ignore_eos": True}
    request = asyncio.create_task(
        e2e.http.post(f"{e2e.gateway}/v1/chat/completions", json=body, headers=e2e.auth)
    )
    await e2e.wait_running(1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await e2e.wait_running(0)


async def test_endpoint_a_model_does_not_serve_is_openai_shaped(oai: openai.AsyncOpenAI) -> None:
    # vLLM answers FastAPI's {"detail": "Not Found"} here; clients get OpenAI's error shape.
    with pytest.raises(openai.NotFoundError) as info:
        await oai.embeddings.create(model=CHAT, input="hello")
    assert info.value.body == {
        "message": "The model's engine does not serve /v1/embeddings.",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }


async def test_rate_limit_error_with_readable_headers(e2e: E2E) -> None:
    admin = {"authorization": "Bearer e2e-admin-token-0123456789"}
    async with e2e.http.post(
        f"{e2e.gateway}/admin/v1/keys", json={"tenant": "e2e", "rpm": 1}, headers=admin
    ) as resp:
        key = (await resp.json())["key"]
    async with openai.AsyncOpenAI(
        base_url=f"{e2e.gateway}/v1", api_key=key, max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=CHAT, messages=FRANCE, max_tokens=2
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=2)
    assert info.value.type == "requests"
    assert int(info.value.response.headers["retry-after"]) >= 1
