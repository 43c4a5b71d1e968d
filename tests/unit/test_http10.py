"""HTTP/1.0 requests get answers HTTP/1.0 clients can read: no chunked framing, no 1xx.
Unchunked's writes are checked on a recording transport; then the gateway's protocol, served by a
real uvicorn, is asked over a raw socket in HTTP/1.0 and in HTTP/1.1."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from starlette.types import Receive, Scope, Send

from gateway.http10 import Unchunked, unframed
from gateway.netutil import free_port
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
FRAMES = [b"data: 1\n\n", b"data: [DONE]\n\n"]


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def unchunked() -> tuple[Unchunked, Recording]:
    inner = Recording()
    return Unchunked(cast(asyncio.Transport, inner)), inner


async def test_chunks_lose_their_framing_whatever_their_number_per_write() -> None:
    assert unframed(b"5\r\nhello\r\n") == b"hello"
    assert unframed(b"5\r\nhello\r\n1a\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n") == b"hello" + b"x" * 26
    assert unframed(b"0\r\n\r\n") == b""
    assert unframed(b"3\r\na\r\n\r\n") == b"a\r\n"  # the payload's own CRLF stays


async def test_a_stream_s_head_and_chunks_are_written_plain() -> None:
    transport, inner = unchunked()
    transport.write(STREAM_HEAD)
    transport.write(b"9\r\ndata: 1\n\n\r\n")
    transport.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    transport.write(b"0\r\n\r\n")  # an empty last body message: nothing to write
    assert inner.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        *FRAMES,
    ]
    assert transport.get_extra_info("peername") == "info:peername"


async def test_an_answer_with_a_length_and_an_interim_answer() -> None:
    transport, inner = unchunked()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # not for an HTTP/1.0 client
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    transport.write(head)
    transport.write(b"{}")  # not chunked: as it is
    assert inner.writes == [head, b"{}"]


async def stream_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"text/event-stream"), (b"x-body", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for frame in FRAMES:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def ask(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send `request`, read until the server closes: the head and the body as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 5)  # to the end: the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.lower(), body


async def test_an_http_1_0_client_reads_a_stream_without_chunks_and_1_1_keeps_them() -> None:
    port = free_port()
    async with serve_asgi(stream_app, port, lifespan="off"):
        post = b"POST /stream HTTP/1.0\r\ncontent-length: 5\r\n"
        head, body = await ask(port, post + b"expect: 100-continue\r\n\r\nhello")
        assert head.startswith(b"http/1.1 200 ok")  # not a 100 first
        assert b"transfer-encoding" not in head
        assert b"x-body: 5" in head
        assert b"connection: close" in head
        assert body == b"".join(FRAMES)

        request = b"POST /stream HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 0"
        head, body = await ask(port, request + b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert body == b"9\r\ndata: 1\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
