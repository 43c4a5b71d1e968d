"""The simulator on a real socket, seen by the official openai client and by a raw HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway.sim.config import SimConfig
from gateway.sim.text import chat_prompt, completion_tokens, count_prompt_tokens, embedding
from tests.integration.sim_fixture import running_sim, running_sim_process, sim_state

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "sim-model"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me a story"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
PROMPT_TOKENS = count_prompt_tokens(CHAT)
DEFAULT_TOKENS = 8


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim() -> AsyncIterator[str]:
    config = SimConfig(models=[MODEL, "alias"], max_tokens=DEFAULT_TOKENS, embedding_dim=12)
    async with running_sim(config) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: str) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=f"{sim}/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


async def post(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=orjson.dumps(body)) as resp:
        payload: dict[str, Any] = orjson.loads(await resp.read())
        return resp.status, payload


def frames(raw: bytes) -> list[Any]:
    """The payloads of an SSE body, parsed; the final [DONE] stays a string."""
    assert raw.endswith(b"data: [DONE]\n\n")
    datas = [frame.removeprefix(b"data: ") for frame in raw.split(b"\n\n") if frame]
    return [data.decode() if data == b"[DONE]" else orjson.loads(data) for data in datas]


def story(tokens: int) -> str:
    return "".join(completion_tokens(chat_prompt(MESSAGES).text, tokens))


# --- the OpenAI surface, through the official client ---


async def test_chat_without_max_tokens_stops_naturally(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert answer.id.startswith("chatcmpl-")
    assert (answer.object, answer.model) == ("chat.completion", MODEL)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == story(DEFAULT_TOKENS)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        PROMPT_TOKENS,
        DEFAULT_TOKENS,
    )
    assert answer.usage.total_tokens == PROMPT_TOKENS + DEFAULT_TOKENS


async def test_chat_with_max_tokens_is_cut_at_that_length(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=3,
        n=2,
    )
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.choices[0].message.content == story(3)
    assert answer.choices[1].message.content != story(3)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6


async def test_chat_stream_starts_with_the_role_and_matches_the_answer(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    first = chunks[0].choices[0]
    assert (first.delta.role, first.delta.content, first.finish_reason) == ("assistant", "", None)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == story(5)
    assert [c.choices[0].finish_reason for c in chunks[1:]] == [None] * 4 + ["length"]
    assert all(c.usage is None for c in chunks)
    assert all(c.id == chunks[0].id and c.id.startswith("chatcmpl-") for c in chunks)


async def test_include_usage_adds_one_final_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == DEFAULT_TOKENS
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert all(c.usage is None for c in chunks[:-1])


async def test_completions_answer_every_prompt_and_stream(client: AsyncOpenAI) -> None:
    answer = await client.completions.create(model="alias", prompt=["one", "two words"], n=2)
    assert answer.id.startswith("cmpl-")
    assert (answer.object, answer.model) == ("text_completion", "alias")
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.choices[2].text == "".join(completion_tokens("two words", DEFAULT_TOKENS))
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2 + 3, 4 * 8)
    stream = await client.completions.create(model=MODEL, prompt="one", max_tokens=4, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == "".join(completion_tokens("one", 4))
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "length"]


async def test_embeddings_have_the_configured_dimensions(client: AsyncOpenAI) -> None:
    answer = await client.embeddings.create(model=MODEL, input=["hello", "world"])  # base64
    assert [len(item.embedding) for item in answer.data] == [12, 12]
    assert answer.data[0].embedding == pytest.approx(embedding("hello", 12), abs=1e-6)
    assert answer.usage.prompt_tokens == 4
    floats = await client.embeddings.create(
        model=MODEL, input="hello", encoding_format="float", dimensions=3
    )
    assert floats.data[0].embedding == embedding("hello", 3)


async def test_models_are_listed_like_vllm(
    client: AsyncOpenAI, http: aiohttp.ClientSession, sim: str
) -> None:
    assert [model.id async for model in client.models.list()] == [MODEL, "alias"]
    async with http.get(f"{sim}/v1/models") as resp:
        card = (await resp.json())["data"][0]
    assert (card["object"], card["owned_by"], card["root"]) == ("model", "vllm", MODEL)
    assert card["max_model_len"] == 2048


async def test_unknown_model_is_vllms_404_with_an_integer_code(
    client: AsyncOpenAI, http: aiohttp.ClientSession, sim: str
) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    status, payload = await post(http, f"{sim}/v1/chat/completions", {**CHAT, "model": "gpt-x"})
    assert status == 404
    assert payload == {
        "error": {
            "message": "The model `gpt-x` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


# --- raw HTTP: exact layouts, errors, counters ---


async def test_continuous_usage_stats_put_running_usage_on_every_chunk(
    http: aiohttp.ClientSession, sim: str
) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**CHAT, "stream": True, "max_tokens": 3, "stream_options": options}
    async with http.post(f"{sim}/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        payloads = frames(await resp.read())
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3]
    assert all(c["usage"]["prompt_tokens"] == PROMPT_TOKENS for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + 3


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b'{"model": "sim-model"}', "messages"),
        ("/v1/completions", b'{"model": "sim-model", "prompt": 5}', "prompt"),
        ("/v1/embeddings", b'{"model": "sim-model"}', "input"),
        ("/v1/chat/completions", b'{"messages": [], "sim": {"drop": 1}}', "sim"),
        (  # (a 500 before: three from one tenant ejected the engine)
            "/v1/responses",
            b'{"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}',
            "input[0].content[0].text",
        ),
    ],
)
async def test_bad_requests_are_vllms_400(
    http: aiohttp.ClientSession, sim: str, path: str, body: bytes, param: str | None
) -> None:
    async with http.post(f"{sim}{path}", data=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["type"], error["code"], error["param"]) == ("BadRequestError", 400, param)
    assert error["message"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "n": 100_000, "max_tokens": 3},
            "n must be at most 16384, got 100000. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "hi", "n": 10**9, "stream": True},
            "n must be at most 16384, got 1000000000. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.",
        ),
        (
            "/v1/embeddings",
            {"model": MODEL, "input": "hi", "dimensions": 10**8},
            "Model 'sim-model' only supports dimensions in range [1, 12], got 100000000.",
        ),
    ],
)
async def test_huge_n_or_dimensions_are_vllms_400_not_work(
    http: aiohttp.ClientSession, sim: str, path: str, body: dict[str, Any], message: str
) -> None:
    """n=100000 took the simulator seconds and hundreds of MB (vLLM refuses past 16384), and
    dimensions=10**8 built a 10**8-float vector (vLLM refuses past the model's size)."""
    status, payload = await post(http, f"{sim}{path}", body)
    assert status == 400
    assert payload == {
        "error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}
    }


async def test_unknown_paths_are_fastapis_detail_404(http: aiohttp.ClientSession, sim: str) -> None:
    async with http.get(f"{sim}/v1/models/{MODEL}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}
    async with http.get(f"{sim}/v1/chat/completions") as resp:
        assert resp.status == 405
        assert await resp.json() == {"detail": "Method Not Allowed"}


async def test_health_metrics_and_state_agree(http: aiohttp.ClientSession, sim: str) -> None:
    async with http.post(f"{sim}/sim/reset") as resp:
        assert (await resp.json())["total_requests"] == 0
    async with http.get(f"{sim}/health") as resp:
        assert (resp.status, await resp.read()) == (200, b"")
    await post(http, f"{sim}/v1/chat/completions", {**CHAT, "max_tokens": 4})
    state = await sim_state(http, sim)
    assert (state["prompt_tokens_total"], state["generation_tokens_total"]) == (PROMPT_TOKENS, 4)
    async with http.get(f"{sim}/metrics") as resp:
        text = await resp.text()
    labels = f'{{engine="0",model_name="{MODEL}"}}'
    assert f"vllm:num_requests_running{labels} 0.0" in text
    assert f"vllm:num_requests_waiting{labels} 0.0" in text
    assert f"vllm:kv_cache_usage_perc{labels} 0.0" in text
    assert f"vllm:prompt_tokens_total{labels} {float(PROMPT_TOKENS)}" in text
    assert f"vllm:generation_tokens_total{labels} 4.0" in text


async def test_state_shows_the_last_request_as_it_arrived(
    client: AsyncOpenAI, http: aiohttp.ClientSession, sim: str
) -> None:
    await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        extra_headers={"X-Request-Id": "req-42"},
        extra_body={"top_k": 5, "repetition_penalty": 1.1},
    )
    last = (await sim_state(http, sim))["last_request"]
    assert last["headers"]["x-request-id"] == "req-42"
    assert last["headers"]["authorization"] == "Bearer x"
    assert (last["body"]["top_k"], last["body"]["repetition_penalty"]) == (5, 1.1)
    assert last["body"]["messages"] == MESSAGES


# --- as a child process ---


async def test_the_simulator_runs_as_a_process(http: aiohttp.ClientSession) -> None:
    config = SimConfig(models=["proc-model"], max_tokens=3, itl_ms=1)
    async with running_sim_process(config) as url:
        body = {"model": "proc-model", "messages": MESSAGES}
        status, answer = await post(http, f"{url}/v1/chat/completions", body)
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == story(3)
    assert answer["usage"]["completion_tokens"] == 3
