"""The gateway's HTTP protocol: a response head leaves with the body that follows it, and never
waits past its turn of the event loop; a request hears from its connection that its client hung
up. HeadWithBody's writes are counted on a recording transport; the protocol itself is served
by a real uvicorn and read by a real client."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
import orjson
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.client_link import ClientLink, client_link
from gateway.http_protocol import BODY_MIN_RATE, MAX_HEAD_BYTES, GatewayHttpProtocol, HeadWithBody
from gateway.netutil import free_port
from tests.support.servers import serve_asgi, serve_uvicorn

pytestmark = pytest.mark.asyncio(loop_scope="session")

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """The transport's side: what was written, in what calls, and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def wrapped() -> tuple[HeadWithBody, Recording]:
    inner = Recording()
    return HeadWithBody(cast(asyncio.Transport, inner), asyncio.get_running_loop()), inner


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    transport, inner = wrapped()
    transport.write(HEAD)
    assert inner.writes == []  # held
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_that_nothing_follows_leaves_at_the_end_of_the_turn() -> None:
    transport, inner = wrapped()
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]
    transport.write(b"data: 1\n\n")  # a stream's first frame, later: straight through
    assert inner.writes == [HEAD, b"data: 1\n\n"]


async def test_closing_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    transport, inner = wrapped()
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [HEAD]
    assert inner.closed
    assert transport.is_closing()
    assert transport.get_extra_info("peername") == "info:peername"
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]  # not twice


async def test_writes_that_are_not_a_head_are_not_held() -> None:
    transport, inner = wrapped()
    for data in (b"5\r\nhello\r\n", b"HTTP/1.1 but not a head", b"0\r\n\r\n"):
        transport.write(data)
    assert inner.writes == [b"5\r\nhello\r\n", b"HTTP/1.1 but not a head", b"0\r\n\r\n"]


async def test_uvicorn_serves_whole_answers_and_streams_whose_head_comes_first() -> None:
    body_may_go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/whole":
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"ok":true}'})
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # The head must not wait for this (the client sets it once it has the head); should
        # it wait, the client's timeout fails the test and this gives up, ending the answer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(body_may_go.wait(), 12)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async with serve_asgi(app, lifespan="off") as base, aiohttp.ClientSession() as http:
        for _ in range(3):  # on one kept-alive connection
            async with http.get(f"{base}/whole") as resp:
                assert resp.status == 200
                assert await resp.json() == {"ok": True}
        async with asyncio.timeout(5), http.get(f"{base}/stream") as resp:  # the head alone
            assert resp.headers["content-type"] == "text/event-stream"
            body_may_go.set()
            assert await resp.read() == b"data: 1\n\ndata: [DONE]\n\n"


async def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()  # the first receive is what writes 100 Continue
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"%d" % len(body)
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    port = free_port()
    async with serve_asgi(app, port, lifespan="off"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n"
                b"expect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"hello")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"5"
        finally:
            writer.close()


async def test_a_request_is_told_by_its_connection_when_its_client_hangs_up() -> None:
    links: list[ClientLink] = []
    heard: list[str] = []
    hung_up = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        link = client_link(scope)
        assert link is not None
        links.append(link)
        if scope["path"] == "/answered":
            link.listen(lambda: heard.append("answered"))
            link.listen(None)  # its work is over: nothing to hear any more
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
            return

        def left() -> None:
            heard.append("left")
            hung_up.set()

        link.listen(left)
        await asyncio.wait_for(hung_up.wait(), 5)  # no task waits on receive: the link tells

    port = free_port()
    async with serve_asgi(app, port, lifespan="off"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /answered HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
        writer.write(b"POST /waits HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            while len(links) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert links[0] is links[1]  # one link for the connection's requests
        assert not links[1].gone
        writer.close()
        await asyncio.wait_for(hung_up.wait(), 5)
    assert heard == ["left"]
    assert links[1].gone


async def test_a_request_head_past_the_limit_is_431_before_it_is_held() -> None:
    """httptools holds a header until its end: one client sending a 300 MiB header made the
    gateway hold 300 MiB before any credential was read. Heads of large tokens still pass, as
    do large bodies on the same kept-alive connection."""
    seen: list[int] = []
    port = free_port()
    async with serve_asgi(body_counter([], seen), port, lifespan="off"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        token = b"t" * (32 * 1024)  # a large JWT passes
        body = b"b" * (1024 * 1024)  # and a body past the head's limit
        writer.write(
            b"POST /ok HTTP/1.1\r\nhost: test\r\nauthorization: Bearer %s\r\n"
            b"content-length: %d\r\n\r\n%s" % (token, len(body), body)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"%d" % len(body)
        writer.write(b"GET /big HTTP/1.1\r\nhost: test\r\nx-big: ")
        writer.write(b"a" * (4 * MAX_HEAD_BYTES))  # one header past the limit, in one write
        await writer.drain()  # (what the server has not read as it answers must not reset the
        # connection before the client reads the answer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 431 ")
        assert b"connection: close" in head
        assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", head), head  # (had none)
        error = orjson.loads(await asyncio.wait_for(reader.read(), 5))["error"]
        assert error["code"] == "request_headers_too_large"
        assert error["type"] == "invalid_request_error"
        assert "65536 bytes" in error["message"]
        writer.close()
    assert seen == [len(body)]  # the app never saw the refused request


async def test_a_request_that_is_not_http_is_answered_in_the_one_error_shape() -> None:
    """uvicorn answered it in plain text ("Invalid HTTP request received.")."""
    seen: list[int] = []
    port = free_port()
    async with serve_asgi(body_counter([], seen), port, lifespan="off"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHo st: test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/json" in head
        assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", head), head  # (had none)
        error = orjson.loads(await asyncio.wait_for(reader.read(), 5))["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http_request")
        writer.close()
    assert seen == []


async def test_the_head_limit_is_counted_to_the_byte_however_the_reads_split_it() -> None:
    """Counted in whole reads, a head of 64-128 KiB that ended within its second read passed,
    and a URL past httptools' 65,535 bytes got uvicorn's plain-text 400."""
    port = free_port()

    async def head_of(parts: list[bytes]) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)  # a read each
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        rest = await asyncio.wait_for(reader.read(), 5) if b" 431 " in head else b""
        writer.close()
        return head, rest

    def header_of(size: int) -> list[bytes]:
        start = b"GET /h HTTP/1.1\r\nhost: test\r\nx-big: "
        filler = b"a" * (size - len(start) - 4)
        return [start + filler[:40_000], filler[40_000:] + b"\r\n\r\n"]

    async with serve_asgi(body_counter([], []), port, lifespan="off"):
        fits, _ = await head_of(header_of(MAX_HEAD_BYTES))
        assert fits.startswith(b"HTTP/1.1 200 ")
        for parts in (
            header_of(MAX_HEAD_BYTES + 1),
            header_of(100_000),
            [b"GET /" + b"u" * 66_000 + b" HTTP/1.1\r\nhost: test\r\n\r\n"],
        ):
            head, rest = await head_of(parts)
            assert head.startswith(b"HTTP/1.1 431 "), head
            assert orjson.loads(rest)["error"]["code"] == "request_headers_too_large"


def keep_alive_1s(app: ASGIApp, port: int) -> uvicorn.Config:
    """The gateway's protocol with a keep-alive time of 1 s, the deadline of heads and bodies."""
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",
        http=GatewayHttpProtocol,
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=1,
    )


async def test_a_connection_that_never_sends_a_whole_head_is_closed() -> None:
    """uvicorn arms its keep-alive timer only after an answer, and any byte received cancels
    it: a connection that sent nothing, or a head a byte at a time, was held open forever (a
    few thousand such leave the process without file descriptors). A head now has the
    keep-alive time to arrive whole, on a new connection as between requests."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def trickle(writer: asyncio.StreamWriter, head: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.1)

    port = free_port()
    config = keep_alive_1s(app, port)
    head = b"GET /slow HTTP/1.1\r\nhost: test\r\nx-padding: " + b"p" * 200 + b"\r\n\r\n"
    async with serve_uvicorn(config):
        silent = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        served = await asyncio.open_connection("127.0.0.1", port)
        served[1].write(b"GET /once HTTP/1.1\r\nhost: test\r\n\r\n")
        answer = await asyncio.wait_for(served[0].readuntil(b"ok"), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        trickles = [asyncio.ensure_future(trickle(w, head)) for _, w in (slow, served)]
        for reader, writer in (silent, slow, served):
            assert await asyncio.wait_for(reader.read(), 15) == b""  # closed by the server
            writer.close()
        for task in trickles:
            task.cancel()


def body_counter(
    heard: list[str], sizes: list[int] | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An app that answers the size of the body it read (noted in `sizes`); a path whose
    client left is heard."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                heard.append(scope["path"])
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if sizes is not None:
            sizes.append(size)
        answer = b"%d" % size
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def post_head(path: str, length: int) -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % (path.encode(), length)


async def send_slowly(writer: asyncio.StreamWriter, chunk: bytes, times: int) -> None:
    with contextlib.suppress(ConnectionError):
        for _ in range(times):
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.25)


async def test_a_body_that_does_not_come_in_time_is_408_and_closed() -> None:
    """A client that sent its head and part of its body, or its body a byte at a time, held
    its request (one of max_inflight_requests, with a key's slot) for ever. A body now has the
    keep-alive time, a second more for every BODY_MIN_RATE bytes received: a stalled or
    trickled body is 408 and closed, and the request waiting on it hears its client is gone;
    a slow body at the rate arrives whole and is answered."""
    heard: list[str] = []
    port = free_port()
    config = keep_alive_1s(body_counter(heard), port)
    async with serve_uvicorn(config):
        stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled[1].write(post_head("/stalled", 1000) + b"x" * 10)
        trickled = await asyncio.open_connection("127.0.0.1", port)
        trickled[1].write(post_head("/trickled", 1000))
        burst = await asyncio.open_connection("127.0.0.1", port)  # then nothing: it earned
        burst[1].write(post_head("/burst", 100_000) + b"z" * 90_000)  # 180 s at the rate
        at_rate = await asyncio.open_connection("127.0.0.1", port)
        at_rate[1].write(post_head("/at-rate", 8 * BODY_MIN_RATE))
        senders = [
            asyncio.ensure_future(send_slowly(trickled[1], b"x", 1000)),  # 4 bytes a second
            asyncio.ensure_future(send_slowly(at_rate[1], b"y" * BODY_MIN_RATE, 8)),  # 2 s
        ]
        try:
            for reader, _ in (stalled, trickled, burst):
                answer = await asyncio.wait_for(reader.read(), 10)  # then closed
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                error = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
                assert error["code"] == "request_timeout"
                assert "did not arrive within 1 s" in error["message"]
            answer = await asyncio.wait_for(at_rate[0].readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 200 OK")
            assert await at_rate[0].readexactly(4) == b"%d" % (8 * BODY_MIN_RATE)
            async with asyncio.timeout(5):
                while len(heard) < 3:  # noqa: ASYNC110 (the app's list has no event)
                    await asyncio.sleep(0.02)
            assert sorted(heard) == ["/burst", "/stalled", "/trickled"]
        finally:
            for task in senders:
                task.cancel()
            for _, writer in (stalled, trickled, burst, at_rate):
                writer.close()


async def test_a_408_lingers_for_a_client_still_sending_its_body() -> None:
    """Found in CI97: the connection was closed as the 408 went out, so the bytes a client
    still sent (a trickled body) met a closed socket, which answers with a reset, and a reset
    that comes before the client reads takes the unread 408 with it (a ConnectionResetError
    where the answer was due). It lingers as after a 431: the gateway's end closed after the
    408, what the client still sends read and dropped for LINGER_S, no reset."""
    heard: list[str] = []
    port = free_port()
    async with serve_uvicorn(keep_alive_1s(body_counter(heard), port)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post_head("/late", 1000) + b"x" * 10)
        try:
            answer = await asyncio.wait_for(reader.read(), 10)  # the 408, then its end closed
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            for _ in range(5):  # the client sends on: each is read and dropped, not reset
                writer.write(b"y")
                await writer.drain()
                await asyncio.sleep(0.1)
            assert not writer.is_closing()
            async with asyncio.timeout(5):
                while heard != ["/late"]:  # noqa: ASYNC110 (the app's list has no event)
                    await asyncio.sleep(0.02)  # and the request heard its client is gone
        finally:
            writer.close()


async def test_chunk_extensions_earn_a_body_no_time() -> None:
    """Found by review: the body's deadline counted the bytes read, a chunked body's framing
    among them, so chunks of one byte each with a long extension (`1;e=…`) moved it on at
    600 bytes a second for ever while the body grew a byte a second, never reaching
    max_body_bytes: a keyed client held a request slot as long as it liked. Only the body's
    own bytes count."""
    heard: list[str] = []
    port = free_port()
    async with serve_uvicorn(keep_alive_1s(body_counter(heard), port)):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /extended HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        padded = b"1;e=" + b"p" * (2 * BODY_MIN_RATE) + b"\r\nx\r\n"  # two seconds' worth
        sender = asyncio.ensure_future(send_slowly(writer, padded, 1000))
        try:
            answer = await asyncio.wait_for(reader.read(), 10)  # (without: never, here 10 s)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            async with asyncio.timeout(5):
                while heard != ["/extended"]:  # noqa: ASYNC110 (the app's list has no event)
                    await asyncio.sleep(0.02)
        finally:
            sender.cancel()
            writer.close()
