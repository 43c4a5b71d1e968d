"""An HTTP/1.0 client (ab, old probes and proxies) reads the gateway's streams and answers as
the gateway sent them: uvicorn framed a stream in chunks for it, which it cannot read."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson
import pytest

from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def ask_http10(gateway: str, body: dict[str, object]) -> tuple[bytes, bytes]:
    url = urlsplit(gateway)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    payload = orjson.dumps(body)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        answer = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head.lower(), rest


async def test_a_stream_reaches_an_http_1_0_client_as_plain_frames(stack: Stack) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    head, body = await ask_http10(stack.gateway, chat)
    assert head.startswith(b"http/1.1 200"), head
    assert b"transfer-encoding" not in head
    frames = body.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(frame.removeprefix(b"data: ")) for frame in frames[:-2]]
    assert len(chunks) > 1
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}


async def test_a_whole_answer_reaches_an_http_1_0_client_with_its_length(stack: Stack) -> None:
    head, body = await ask_http10(
        stack.gateway, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert b"content-length: %d" % len(body) in head
    assert orjson.loads(body)["object"] == "chat.completion"
