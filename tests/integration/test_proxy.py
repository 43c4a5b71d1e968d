"""The OpenAI surface through the gateway, against a simulator engine, with the real SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client(stack: Stack, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway}/v1", api_key="unused", **kwargs)


async def test_chat_non_stream_returns_the_engine_body(stack: Stack) -> None:
    messages: Any = [{"role": "user", "content": "hello there"}]
    async with client(stack) as oai:
        raw = await oai.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
        completion = raw.parse()
    assert raw.headers["x-request-id"]
    assert completion.model == MODEL
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    # The same body as the engine's own answer (modulo its id and timestamp).
    async with stack.http.post(
        f"{stack.sim}/v1/chat/completions", json={"model": MODEL, "messages": messages}
    ) as resp:
        direct = await resp.json()
    assert drop_nones(direct["choices"]) == completion.model_dump(exclude_none=True)["choices"]


def drop_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nones(v) for v in value]
    return value


async def test_stream_without_usage_has_no_usage_chunk(stack: Stack) -> None:
    async with client(stack) as oai:
        stream = await oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True, max_tokens=5
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


async def test_stream_with_include_usage_ends_with_usage(stack: Stack) -> None:
    async with client(stack) as oai:
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            max_tokens=4,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_legacy_completions_and_embeddings(stack: Stack) -> None:
    async with client(stack) as oai:
        completion = await oai.completions.create(model=MODEL, prompt="Once upon", max_tokens=3)
        embedding = await oai.embeddings.create(model=MODEL, input=["a", "b"])
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 3
    assert [d.index for d in embedding.data] == [0, 1]
    assert len(embedding.data[0].embedding) > 0


async def test_an_answer_larger_than_the_read_buffer_arrives_whole(stack: Stack) -> None:
    """A whole (non-streamed) answer past the connection's read buffer (256 KiB) paused
    reading and was never taken: the client got a 504 after the response timeout, and the
    healthy engine was ejected (six embeddings of 4,096 dimensions)."""
    inputs = [f"item {i}" for i in range(2048)]  # the sim's vectors: ~420 KiB of JSON in all
    async with client(stack) as oai:
        raw = await oai.embeddings.with_raw_response.create(
            model=MODEL, input=inputs, encoding_format="float"
        )
    assert len(raw.content) > 320 * 1024  # past the buffer
    embedding = raw.parse()
    assert [d.index for d in embedding.data] == list(range(2048))


async def test_vllm_extra_fields_and_request_id_reach_the_engine_untouched(stack: Stack) -> None:
    extra = {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "structured_outputs": {"choice": ["yes", "no"]},
        "chat_template_kwargs": {"enable_thinking": False},
    }
    async with client(stack) as oai:
        raw = await oai.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_body=extra,
            extra_headers={"x-request-id": "client-id-42"},
        )
    assert raw.headers["x-request-id"] == "client-id-42"
    last = (await stack.sim_state())["last_request"]
    assert isinstance(last, dict)
    # The engine gets the gateway's own id: vLLM names its request by this header before the
    # body's request_id (refused), so a tenant named engine requests, the same in two tenants
    engine_id = last["headers"]["x-request-id"]
    assert engine_id != "client-id-42"
    assert len(engine_id) == 32
    for key, value in extra.items():
        assert last["body"][key] == value
    # The client's credentials are never forwarded to engines.
    assert "authorization" not in last["headers"]


async def test_models_list_and_get(stack: Stack) -> None:
    async with client(stack) as oai:
        models = await oai.models.list()
        one = await oai.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError) as info:
            await oai.models.retrieve("nope")
    assert {m.id for m in models.data} == {MODEL, "dead-model"}
    assert one.id == MODEL
    assert one.object == "model"
    assert info.value.code == "model_not_found"


async def test_generated_request_id_when_client_sends_none(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/v1/models") as resp:
        first = resp.headers["x-request-id"]
    async with stack.http.get(f"{stack.gateway}/v1/models") as resp:
        second = resp.headers["x-request-id"]
    assert first != second
    assert len(first) == 32


async def test_a_request_id_holding_an_api_key_is_replaced(stack: Stack) -> None:
    # (a client or proxy that copied the key into it: echoed, logged and billed under it whole)
    key = "sk-llmaas-0123456789ab-" + "5" * 48
    async with client(stack) as oai:
        raw = await oai.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-request-id": key},
        )
    kept = raw.headers["x-request-id"]
    assert "sk-llmaas-" not in kept
    assert len(kept) == 32


async def test_stream_frames_reach_the_client_while_the_engine_still_generates(
    stack: Stack,
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "slowly"}],
        "stream": True,
        "max_tokens": 10,
        "sim": {"itl_ms": 150},
    }
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp:
        seen = b""
        while b'"content":" ' not in seen:  # the first generated token (after the role chunk)
            seen += await resp.content.readany()
        # Not buffered: the engine is still generating the other nine tokens.
        assert (await stack.sim_state())["running"] == 1
        rest = await resp.read()
    assert rest.endswith(b"data: [DONE]\n\n")
