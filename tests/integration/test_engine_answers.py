"""Engine answers the OpenAI API never gives (and vLLM's word that its engine core died, in
a stream's error frame), from an engine whose every byte the test writes:
they reach the client as the gateway's 502, never with the engine's status, and the client's
connection stays usable."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.netutil import free_port
from tests.integration.conftest import MODEL, gateway_settings
from tests.support.logs import collected
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
# What the engine answers a chat request whose message says which (the rest: a plain error)
ODD = {
    "s204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "s304": b"HTTP/1.1 304 Not Modified\r\n\r\n",
    "s201": b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
    b"content-length: 2\r\n\r\n{}",
    "nothttp": b"HTTP/1.1 2000 OK\r\n\r\n",
    "gzip": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(gzip.compress(b"{}")), gzip.compress(b"{}")),
}
SAID = {"gzip": "content-encoding 'gzip'", "nothttp": "not valid HTTP"}
# vLLM once its engine core died, to a request it had taken as a stream (an error frame)
CORE_GONE = b'data: {"error": {"message": "EngineCore encountered an issue.", "code": 500}}\n\n'
CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": MODEL,
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
}
TOKEN = b"data: " + orjson.dumps(CHUNK) + b"\n\n"
# vLLM refusing a request only as it generates it (a first frame that is an error, of a 4xx)
REFUSED = (
    b'data: {"error": {"message": "This request asks for too much.", "type": '
    b'"BadRequestError", "param": null, "code": 400}}\n\ndata: [DONE]\n\n'
)
MIDWAY = TOKEN + CORE_GONE + b"data: [DONE]\n\n"
BAD_FRAME = TOKEN + b"data: {broken\n\n" + TOKEN + b"data: [DONE]\n\n"
ANSWERS = ODD | {
    "core_gone": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(CORE_GONE), CORE_GONE),
    "refused_first": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(REFUSED), REFUSED),
    "core_gone_midway": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(MIDWAY), MIDWAY),
    "bad_frame": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BAD_FRAME), BAD_FRAME),
    "not_json": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: 16\r\n\r\nthis is not json",
}


def answer(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        content_type,
        len(body),
        body,
    )


async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            lines = head.lower().split(b"\r\n")
            size = next((int(x[15:]) for x in lines if x.startswith(b"content-length:")), 0)
            body: Any = orjson.loads(await reader.readexactly(size)) if size else {}
            if head.startswith(b"GET /v1/models"):
                writer.write(answer(MODELS))
            elif head.startswith(b"GET "):
                writer.write(answer(b"{}"))
            else:
                writer.write(ANSWERS[body["messages"][0]["content"]])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    listener = await asyncio.start_server(engine, "127.0.0.1", port)
    settings = gateway_settings(f"http://127.0.0.1:{port}", tmp_path / "spill")
    try:
        async with serve_asgi(create_app(settings)) as url:
            yield url
    finally:
        listener.close()


@pytest.mark.parametrize("odd", list(ODD))
async def test_an_answer_of_a_status_or_encoding_outside_the_api_is_a_502(
    gateway: str, odd: str
) -> None:
    # A 204 or 304 relayed with a JSON body desynchronised the client's connection (its next
    # request failed); a 201 was an SDK's success; a gzip body a 200 no client could read.
    messages: Any = [{"role": "user", "content": odd}]
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai:
        for stream in (False, True, False):  # the same connection, again
            with pytest.raises(openai.APIStatusError) as refused:
                await oai.chat.completions.create(model=MODEL, messages=messages, stream=stream)
            assert refused.value.status_code == 502
            error = refused.value.body
            assert isinstance(error, dict)
            assert error["code"] == "engine_bad_answer", error
            said = SAID.get(odd, f"HTTP {odd[1:]}")
            assert said in error["message"]


async def test_an_engine_core_gone_while_a_plain_request_streamed_is_a_retryable_503(
    gateway: str,
) -> None:
    # (its HTTP 500 was one already; the same said in a stream's error frame was a 500)
    messages: Any = [{"role": "user", "content": "core_gone"}]
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai:
        raw = oai.chat.completions.with_raw_response
        with pytest.raises(openai.APIStatusError) as refused:
            await raw.create(model=MODEL, messages=messages)
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "engine_unavailable"


@pytest.mark.parametrize(
    ("said", "status", "code", "outcome"),
    [
        ("core_gone", 503, "engine_unavailable", "engine_error"),
        ("refused_first", 400, None, "rejected"),
    ],
)
async def test_a_stream_whose_first_frame_is_an_error_is_answered_with_its_status(
    gateway: str, said: str, status: int, code: str | None, outcome: str
) -> None:
    """Found 2026-12-06: a stream whose only (last) engine opened it with an error frame (its
    engine core gone, or a refusal it makes only as it generates) was a 200 with that one
    frame: the SDK raised a plain APIError, never retried a 503, and the access log said 200.
    Nothing had reached the client: it is the answer of the error's status."""
    messages: Any = [{"role": "user", "content": said}]
    with collected("llmaas.access") as logs:
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai:
            with pytest.raises(openai.APIStatusError) as refused:
                await oai.chat.completions.create(model=MODEL, messages=messages, stream=True)
        lines = await logs.wait_for(lambda r: r.getMessage() == "request")
    assert refused.value.status_code == status
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["code"] == code, body
    if said == "refused_first":
        assert body["message"] == "This request asks for too much.", body
        assert body["type"] == "invalid_request_error", body
    else:
        assert refused.value.response.headers["retry-after"] == "1"
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert (fields["outcome"], fields["status"]) == (outcome, status), fields


async def test_an_engine_core_gone_midway_through_a_stream_is_the_engines_failure(
    gateway: str,
) -> None:
    """Found by review: the SDK closes a stream at the engine's error frame; one of 5xx (vLLM's
    engine core gone midway) was then counted and recorded as the client leaving (499,
    client_disconnected), and its frame kept vLLM's "see stack trace (above)". It is the
    gateway's 503 engine_unavailable frame, and the engine's failure."""
    messages: Any = [{"role": "user", "content": "core_gone_midway"}]
    with collected("llmaas.access") as logs:
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai:
            stream = await oai.chat.completions.create(model=MODEL, messages=messages, stream=True)
            first = await anext(stream)
            with pytest.raises(openai.APIError) as failed:
                await anext(stream)
        assert first.choices[0].delta.content == "Hi"
        assert isinstance(failed.value.body, dict)
        assert failed.value.body["code"] == "engine_unavailable", failed.value.body
        lines = await logs.wait_for(lambda r: r.getMessage() == "request")
    fields = lines[0].fields  # type: ignore[attr-defined]
    # (the status it was answered: its stream's, as for a client that reads on to the end)
    assert (fields["outcome"], fields["status"]) == ("engine_error", 200), fields


@pytest.mark.parametrize(
    ("said", "words"),
    [("bad_frame", "a frame of its stream is not JSON"), ("not_json", "its body is not JSON")],
)
async def test_an_answer_that_is_not_json_is_the_engines_failure_not_a_200(
    gateway: str, said: str, words: str
) -> None:
    """Found by review 2026-12-07: a frame that was not JSON in a stream the gateway reads for
    a plain request ended in the gateway's own 500 (an unhandled error), recorded `ok` with
    the tokens before it billed; a 200 whose body was not JSON went to the client as a 200,
    `ok`. Both are an answer the OpenAI API never gives: a 502 `engine_bad_answer`, the
    engine's failure, nothing billed."""
    messages: Any = [{"role": "user", "content": said}]
    with collected("llmaas.access") as logs:
        async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai:
            with pytest.raises(openai.APIStatusError) as refused:
                await oai.chat.completions.create(model=MODEL, messages=messages)
        lines = await logs.wait_for(lambda r: r.getMessage() == "request")
    assert refused.value.status_code == 502
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["code"] == "engine_bad_answer", body
    assert words in body["message"]
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert (fields["outcome"], fields["status"]) == ("engine_error", 502), fields
