"""Fault injection as a raw HTTP client sees it, and `running` staying exact whatever happens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from gateway.sim.config import SimConfig
from gateway.sim.text import chat_prompt, completion_tokens
from tests.integration.sim_fixture import running_sim, sim_state, wait_running

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "sim-model"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me a story"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim() -> AsyncIterator[str]:
    async with running_sim(SimConfig(models=[MODEL])) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=orjson.dumps(body)) as resp:
        payload: dict[str, Any] = orjson.loads(await resp.read())
        return resp.status, payload


def story(tokens: int) -> str:
    return "".join(completion_tokens(chat_prompt(MESSAGES).text, tokens))


# --- fault injection, as a raw client sees it ---


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_fail_status_answers_at_once_with_vllms_body(
    http: aiohttp.ClientSession, sim: str, status: int
) -> None:
    body = {**CHAT, "stream": True, "sim": {"fail_status": status, "fail_message": "nope"}}
    got, payload = await post(http, f"{sim}/v1/chat/completions", body)
    assert got == status
    assert payload["error"]["message"] == "nope"
    assert payload["error"]["code"] == status


async def test_fail_body_detail_is_fastapis_shape(http: aiohttp.ClientSession, sim: str) -> None:
    body = {**CHAT, "sim": {"fail_status": 404, "fail_body": "detail", "fail_message": "gone"}}
    assert await post(http, f"{sim}/v1/chat/completions", body) == (404, {"detail": "gone"})


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_before_headers_closes_without_a_status(sim: str, stream: bool) -> None:
    body = {**CHAT, "stream": stream, "sim": {"drop": "before_headers", "ttft_ms": 20}}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.post(f"{sim}/v1/chat/completions", json=body):
                pass


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_drop_after_headers_truncates_the_body(sim: str, path: str) -> None:
    body = {**CHAT, "input": "x", "sim": {"drop": "after_headers"}}
    async with aiohttp.ClientSession() as session, session.post(f"{sim}{path}", json=body) as resp:
        assert resp.status == 200
        assert int(resp.headers["content-length"]) > 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_drop_after_headers_of_a_stream_sends_no_chunk(sim: str) -> None:
    body = {**CHAT, "stream": True, "sim": {"drop": "after_headers"}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def read_until_broken(resp: aiohttp.ClientResponse) -> bytes:
    """What arrived before the transfer broke; fails if it ended properly."""
    received = b""
    try:
        while chunk := await resp.content.readany():
            received += chunk
    except aiohttp.ClientPayloadError:
        return received
    pytest.fail("the transfer ended properly")


async def test_cut_after_leaves_the_stream_unterminated(sim: str) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 20, "sim": {"cut_after": 3, "itl_ms": 5}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        received = await read_until_broken(resp)
    payloads = [orjson.loads(f.removeprefix(b"data: ")) for f in received.split(b"\n\n") if f]
    assert len(payloads) == 4  # the role chunk and three content chunks, then nothing
    assert "".join(p["choices"][0]["delta"]["content"] for p in payloads) == story(3)


async def test_hang_never_answers_and_is_released_on_disconnect(
    http: aiohttp.ClientSession, sim: str
) -> None:
    body = {**CHAT, "sim": {"hang": True}}
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(f"{sim}/v1/chat/completions", json=body))
        await wait_running(http, sim, 1)
        done, _ = await asyncio.wait((request,), timeout=0.3)
        assert not done  # no status line, no headers
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await wait_running(http, sim, 0)


RESPONSE: dict[str, Any] = {"model": MODEL, "input": "tell me a story", "max_output_tokens": 8}


async def test_the_responses_route_takes_the_same_faults(
    http: aiohttp.ClientSession, sim: str
) -> None:
    """Found by review: /v1/responses took hang, drop and cut_after and answered a whole 200
    all the same (its docstring said they worked as for chat): a test of them tested nothing."""
    url = f"{sim}/v1/responses"
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            body = {**RESPONSE, "stream": stream, "sim": {"drop": "before_headers"}}
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with session.post(url, json=body):
                    pass
        async with session.post(url, json={**RESPONSE, "sim": {"drop": "after_headers"}}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        # a stream's opening events (sent as vLLM takes the request), then the drop
        body = {**RESPONSE, "stream": True, "sim": {"drop": "after_headers"}}
        async with session.post(url, json=body) as resp:
            received = await read_until_broken(resp)
        events = [line for line in received.split(b"\n") if line.startswith(b"event: ")]
        assert events == [b"event: response.created", b"event: response.in_progress"]
        body = {**RESPONSE, "stream": True, "sim": {"cut_after": 3, "itl_ms": 5}}
        async with session.post(url, json=body) as resp:
            received = await read_until_broken(resp)
        assert received.count(b"event: response.output_text.delta") == 3
        assert b"response.completed" not in received
        request = asyncio.ensure_future(session.post(url, json={**RESPONSE, "sim": {"hang": True}}))
        await wait_running(http, sim, 1)
        done, _ = await asyncio.wait((request,), timeout=0.3)
        assert not done
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await wait_running(http, sim, 0)
    async with running_sim(SimConfig(models=[MODEL], fail_rate=0.5, fail_status=503)) as other:
        statuses = [(await post(http, f"{other}/v1/responses", RESPONSE))[0] for _ in range(4)]
    assert statuses == [200, 503, 200, 503]


async def test_ttft_override_delays_the_answer(http: aiohttp.ClientSession, sim: str) -> None:
    started = time.monotonic()
    status, _ = await post(http, f"{sim}/v1/chat/completions", {**CHAT, "sim": {"ttft_ms": 150}})
    assert status == 200
    assert time.monotonic() - started >= 0.15


async def test_fail_rate_fails_an_even_share_of_requests(http: aiohttp.ClientSession) -> None:
    async with running_sim(SimConfig(models=[MODEL], fail_rate=0.5, fail_status=503)) as url:
        statuses = [(await post(http, f"{url}/v1/chat/completions", CHAT))[0] for _ in range(6)]
    assert statuses == [200, 503, 200, 503, 200, 503]


# --- running requests: exact, whatever way the client leaves ---


async def _abandon(sim: str, body: dict[str, Any], read_chunks: int | None) -> None:
    """Send `body`; hang up before the headers (None) or after reading `read_chunks` chunks."""
    async with aiohttp.ClientSession() as session:
        if read_chunks is None:
            request = asyncio.ensure_future(session.post(f"{sim}/v1/chat/completions", json=body))
            await asyncio.sleep(0.1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            return
        async with session.post(f"{sim}/v1/chat/completions", json=body) as resp:
            for _ in range(read_chunks):
                await resp.content.readany()
            resp.close()


@pytest.mark.parametrize(
    ("body", "read_chunks"),
    [
        ({**CHAT, "stream": True, "sim": {"ttft_ms": 5000}}, 0),  # waiting for the first token
        ({**CHAT, "stream": True, "max_tokens": 200, "sim": {"itl_ms": 50}}, 2),  # mid-stream
        ({**CHAT, "max_tokens": 200, "sim": {"itl_ms": 50}}, None),  # non-stream, generating
        ({**CHAT, "sim": {"ttft_ms": 5000}}, None),  # non-stream, waiting for the first token
        ({**CHAT, "sim": {"ttft_ms": 5000, "drop": "before_headers"}}, None),
    ],
    ids=["stream-ttft", "mid-stream", "non-stream", "non-stream-ttft", "before-drop"],
)
async def test_a_client_that_leaves_releases_its_request(
    http: aiohttp.ClientSession, sim: str, body: dict[str, Any], read_chunks: int | None
) -> None:
    async with http.post(f"{sim}/sim/reset"):
        pass
    await _abandon(sim, body, read_chunks)
    await wait_running(http, sim, 0)
    state = await sim_state(http, sim)
    assert state["max_running_seen"] == 1
    assert state["generation_tokens_total"] < 200  # only what was made before the hang-up


async def test_concurrent_streams_are_all_counted_then_released(
    http: aiohttp.ClientSession, sim: str
) -> None:
    async with http.post(f"{sim}/sim/reset"):
        pass
    body = {**CHAT, "stream": True, "max_tokens": 5, "sim": {"itl_ms": 20}}
    replies = await asyncio.gather(
        *(post_raw(http, f"{sim}/v1/chat/completions", body) for _ in range(5))
    )
    assert all(raw.endswith(b"data: [DONE]\n\n") for raw in replies)
    state = await sim_state(http, sim)
    assert (state["running"], state["max_running_seen"]) == (0, 5)
    assert state["generation_tokens_total"] == 25


async def post_raw(http: aiohttp.ClientSession, url: str, body: object) -> bytes:
    async with http.post(url, json=body) as resp:
        return await resp.read()


async def test_stream_headers_come_before_the_first_token_like_vllm(
    http: aiohttp.ClientSession, sim: str
) -> None:
    async with http.post(f"{sim}/sim/reset"):
        pass
    body = {**CHAT, "stream": True, "sim": {"ttft_ms": 5000}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        state = await sim_state(http, sim)
        assert (state["running"], state["prompt_tokens_total"]) == (1, 0)  # no prefill yet
        resp.close()
    await wait_running(http, sim, 0)
