"""The engines' HTTP/1.1 client against a real socket server whose every byte the test writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gateway.netutil import free_port
from gateway.proxy import h1, h1_pool
from gateway.proxy.h1 import ConnectFailed, H1Response
from gateway.proxy.h1_pool import H1Pool

pytestmark = pytest.mark.asyncio(loop_scope="session")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # each request's head, as received
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)


class Broken(Exception):
    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(kind)
        self.kind = kind


async def read_request(reader: asyncio.StreamReader, server: Server) -> bool:
    """Read one request (head and sized body); False at EOF."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    server.requests.append(head)
    lines = head.lower().split(b"\r\n")
    length = next((int(x.split(b":")[1]) for x in lines if x.startswith(b"content-length:")), 0)
    if length:
        await reader.readexactly(length)
    return True


@asynccontextmanager
async def serving(handler: Handler, prefix: str = "") -> AsyncIterator[Server]:
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}{prefix}")

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            await handler(reader, writer, server)
        except (asyncio.IncompleteReadError, ConnectionError):
            server.closed_by_client.set()
        finally:
            writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", port)
    try:
        yield server
    finally:
        listener.close()


def sized(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"; charset=utf-8\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )


async def keep_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    while await read_request(reader, server):
        writer.write(sized(b'{"n":%d}' % len(server.requests)))
        await writer.drain()


async def collect(resp: H1Response, into: list[bytes]) -> None:
    async for chunk in resp.chunks():
        into.append(chunk)


async def ask(
    pool: H1Pool, url: str, idle_s: float | None = 5.0, body: bytes = b"{}"
) -> H1Response:
    headers = {"content-type": "application/json"}
    conn = await pool.request(url, "POST", "/v1/chat", body, headers, idle_s=idle_s)
    return H1Response(conn, pool, idle_s, Broken, lambda _: None)


async def test_answers_are_read_and_connections_kept_alive() -> None:
    async with serving(keep_answering, prefix="/engine") as server:
        pool = H1Pool(connect_timeout_s=2)
        for n in (1, 2, 3):
            resp = await ask(pool, server.url)
            assert resp.status == 200
            assert resp.content_type == "application/json"  # parameters dropped, as aiohttp
            assert await resp.read() == b'{"n":%d}' % n
            resp.release()
        assert server.connections == 1  # one connection for the three
        first = server.requests[0]
        assert first.startswith(b"POST /engine/v1/chat HTTP/1.1\r\n")
        assert b"host: 127.0.0.1:" in first
        assert b"content-length: 2\r\n" in first
        pool.close()


async def test_an_answer_past_its_length_is_cut_there_and_its_connection_not_kept() -> None:
    """An engine (or a proxy between) that sends a second answer in the write of the first:
    the first is what its content-length says, and the second is not taken for the next
    request's answer (it was appended to the first, and the connection kept)."""

    async def twice(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while await read_request(reader, server):
            writer.write(sized(b"{}") + sized(b'{"stale":true}'))
            await writer.drain()

    async with serving(twice) as server:
        pool = H1Pool(connect_timeout_s=2)
        for _ in range(2):
            resp = await ask(pool, server.url)
            assert (resp.status, await resp.read()) == (200, b"{}")
            resp.release()
        assert server.connections == 2  # the first was not used again
        pool.close()


async def test_a_stream_arrives_chunk_by_chunk() -> None:
    go_on = asyncio.Event()

    async def streaming(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        w.write(b"transfer-encoding: chunked\r\n\r\n")
        w.write(b"7\r\ndata: 1\r\n")
        await w.drain()
        await go_on.wait()  # the second chunk only once the client has read the first
        w.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await w.drain()
        await read_request(r, s)

    async with serving(streaming) as server:
        pool = H1Pool(connect_timeout_s=2)
        resp = await ask(pool, server.url)
        assert resp.content_type == "text/event-stream"
        seen = []
        async for chunk in resp.chunks():
            seen.append(chunk)
            go_on.set()
        assert seen == [b"data: 1", b"data: 2"]
        resp.release()
        assert len(pool.idle[pool.origin(server.url)]) == 1  # read to its end: kept
        pool.close()


async def test_a_body_that_ends_with_the_connection_is_read_and_not_kept() -> None:
    async def closing(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"a":')
        await w.drain()
        w.write(b"1}")
        await w.drain()
        w.close()

    async with serving(closing) as server:
        pool = H1Pool(connect_timeout_s=2)
        resp = await ask(pool, server.url)
        assert await resp.read() == b'{"a":1}'
        resp.release()
        assert not pool.idle.get(pool.origin(server.url))


async def test_a_connection_the_engine_closed_while_idle_is_not_used_again() -> None:
    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(sized(b"{}"))
        await w.drain()  # then the engine closes it (its keep-alive timeout)

    async with serving(once) as server:
        pool = H1Pool(connect_timeout_s=2)
        for _ in range(3):
            resp = await ask(pool, server.url)
            assert await resp.read() == b"{}"
            resp.release()
            await asyncio.sleep(0.05)  # the close reaches the idle connection
        assert server.connections == 3


async def answer_once_then_close_on_the_next(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    """Answer a connection's first request; close it when the next one comes (as a server
    whose keep-alive timeout fires just as the request is written)."""
    await read_request(reader, server)
    writer.write(sized(b'{"n":%d}' % len(server.requests)))
    await writer.drain()
    await read_request(reader, server)


async def test_a_kept_connection_closing_under_a_request_sends_it_on_a_new_one() -> None:
    async with serving(answer_once_then_close_on_the_next) as server:
        pool = H1Pool(connect_timeout_s=2)
        first = await ask(pool, server.url)
        assert await first.read() == b'{"n":1}'
        first.release()
        second = await ask(pool, server.url)  # the kept one closes: sent again, answered
        assert await second.read() == b'{"n":3}'
        second.release()
        assert server.connections == 2
        assert len(server.requests) == 3
        pool.close()


async def test_a_connection_that_began_to_answer_and_broke_is_not_tried_again() -> None:
    async def head_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(sized(b"{}"))
        await read_request(r, s)
        w.write(b"HTTP/1.1 200 OK\r\n")  # part of a head, then gone
        await w.drain()

    await the_second_request_is_not_sent_again(head_then_close)


async def the_second_request_is_not_sent_again(handler: Handler) -> None:
    """A kept connection's second request fails with Disconnected, sent once: no new
    connection, no second copy of it."""
    async with serving(handler) as server:
        pool = H1Pool(connect_timeout_s=2)
        first = await ask(pool, server.url)
        assert await first.read() == b"{}"
        first.release()
        with pytest.raises(h1.Disconnected):
            await ask(pool, server.url)
        assert server.connections == 1
        assert len(server.requests) == 2
        pool.close()


async def test_a_kept_connection_the_engine_held_the_request_on_is_not_tried_again() -> None:
    """Closed well after the write (past CROSSING_S), with no byte of an answer: the engine
    had the request (it may have read it and worked on it), so it is not sent to it again."""

    async def hold_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(sized(b"{}"))
        await read_request(r, s)
        await asyncio.sleep(h1.CROSSING_S * 3)  # worked on it for a while, then gone

    await the_second_request_is_not_sent_again(hold_then_close)


async def test_a_new_connection_closed_before_the_answer_is_not_tried_again() -> None:
    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)

    async with serving(hang_up) as server:
        pool = H1Pool(connect_timeout_s=2)
        with pytest.raises(h1.Disconnected):
            await ask(pool, server.url)
        assert server.connections == 1


async def test_a_connection_idle_too_long_is_closed_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h1_pool, "REUSE_IDLE_S", 0.2)
    async with serving(keep_answering) as server:
        pool = H1Pool(connect_timeout_s=2)
        for pause in (0.0, 0.4, 0.0):
            await asyncio.sleep(pause)
            resp = await ask(pool, server.url)
            await resp.read()
            resp.release()
        assert server.connections == 2  # the pause outlasted REUSE_IDLE_S; no pause after
        await asyncio.wait_for(server.closed_by_client.wait(), 2)  # the stale one was closed
        pool.close()


async def test_connections_kept_to_an_engine_no_longer_asked_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by review 2026-12-07: a kept connection was closed only when its engine was asked
    again. An engine that left (a pod gone from its Service's DNS name, without a FIN) kept up
    to MAX_IDLE_PER_ENGINE descriptors open for good. Requests to the others close them once
    they are idle past REUSE_IDLE_S."""
    monkeypatch.setattr(h1_pool, "REUSE_IDLE_S", 0.2)
    async with serving(keep_answering) as gone, serving(keep_answering) as other:
        pool = H1Pool(connect_timeout_s=2)
        answers = await asyncio.gather(*(ask(pool, gone.url) for _ in range(3)))
        for resp in answers:
            await resp.read()
            resp.release()
        assert gone.connections == 3
        await asyncio.sleep(0.3)
        for _ in range(2):
            resp = await ask(pool, other.url)
            await resp.read()
            resp.release()
        await asyncio.wait_for(gone.closed_by_client.wait(), 2)
        assert pool.origin(gone.url) not in pool.idle
        pool.close()


async def test_silence_after_the_head_is_a_timeout_and_a_cut_is_a_stream_cut() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        if len(s.requests) == 1:
            await asyncio.sleep(5)  # nothing more: the client's idle timeout
        # the second time: the connection is cut mid-stream (the handler returns)

    async with serving(silent) as server:
        pool = H1Pool(connect_timeout_s=2)
        for expected in ("timeout", "stream_cut"):
            resp = await ask(pool, server.url, idle_s=0.3)
            got: list[bytes] = []
            with pytest.raises(Broken) as broken:
                await collect(resp, got)
            assert broken.value.kind == expected
            assert got == [b"abc"]
            resp.close()


async def test_no_head_in_time_is_a_timeout_and_closing_an_answer_closes_its_connection() -> None:
    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        if len(s.requests) == 1:
            await r.read()  # never answers; sees the client close
            s.closed_by_client.set()
            return
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await w.drain()
        await r.read()
        s.closed_by_client.set()

    async with serving(slow) as server:
        pool = H1Pool(connect_timeout_s=2)
        with pytest.raises(TimeoutError):
            await ask(pool, server.url, idle_s=0.2)
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        server.closed_by_client.clear()
        resp = await ask(pool, server.url)
        resp.close()  # mid-answer: the engine must learn the client is gone
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        assert not pool.idle.get(pool.origin(server.url))


async def test_nobody_listening_is_a_connect_failure() -> None:
    pool = H1Pool(connect_timeout_s=2)
    with pytest.raises(ConnectFailed):
        await ask(pool, f"http://127.0.0.1:{free_port()}")


async def test_a_reader_that_falls_behind_pauses_the_socket() -> None:
    size = h1.HIGH_WATER * 4

    async def big(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(sized(b"x" * size))
        await w.drain()

    async with serving(big) as server:
        pool = H1Pool(connect_timeout_s=2)
        conn = await pool.request(server.url, "GET", "/", b"", {}, idle_s=5)
        resp = H1Response(conn, pool, 5, Broken, lambda _: None)
        while not conn.paused:  # nobody reads: the socket is paused past the high-water mark
            await conn.wait(5)
        assert conn.buffered < size
        assert b"content-length" not in server.requests[0]  # a GET without a body
        total = 0
        async for chunk in resp.chunks():
            total += len(chunk)
        assert total == size
        resp.release()


async def test_an_interim_answer_is_skipped_and_the_final_one_is_this_requests() -> None:
    """A 100 Continue or 103 Early Hints before the answer (a proxy in front of an engine
    sends them): it was taken for the answer, its end left the connection free, and the real
    answer, coming after, was read as the next request's (another tenant's)."""

    async def interim(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while await read_request(r, s):
            n = len(s.requests)
            w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)  # the final answer in a later read
            w.write(sized(b'{"n":%d}' % n))
            await w.drain()

    async with serving(interim) as server:
        pool = H1Pool(connect_timeout_s=2)
        for n in (1, 2):
            resp = await ask(pool, server.url)
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert await resp.read() == b'{"n":%d}' % n
            resp.release()
        assert server.connections == 1
        pool.close()


async def test_a_head_trickled_past_the_timeout_is_a_timeout() -> None:
    """The wait for the head counts from the request's write, not from the last byte: an
    engine sending a header line now and then held the request for ever."""

    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):
            w.write(b"x-wait: 1\r\n")
            await w.drain()
            await asyncio.sleep(0.05)

    async with serving(trickle) as server:
        pool = H1Pool(connect_timeout_s=2)
        async with asyncio.timeout(1.5):  # (2 s of header lines)
            with pytest.raises(TimeoutError):
                await ask(pool, server.url, idle_s=0.3)
        pool.close()


async def test_an_encoded_body_and_what_is_not_http_are_told_apart() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while await read_request(r, s):
            if len(s.requests) == 1:
                w.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-encoding: gzip\r\ncontent-length: 2\r\n\r\nxx"
                )
            else:
                w.write(b"HTTP/1.1 2000 OK\r\n\r\n")
            await w.drain()

    async with serving(answer) as server:
        pool = H1Pool(connect_timeout_s=2)
        resp = await ask(pool, server.url)
        assert (resp.status, resp.content_encoding) == (200, "gzip")
        resp.close()
        with pytest.raises(h1.NotHttp):
            await ask(pool, server.url)
        pool.close()


async def test_what_is_not_http_midway_is_a_bad_answer_not_a_cut() -> None:
    """Garbage after a valid head was counted a stream cut (LlmaasEngineStreamsCut)."""

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await read_request(r, s)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        await w.drain()
        await r.read()

    async with serving(garbage) as server:
        pool = H1Pool(connect_timeout_s=2)
        resp = await ask(pool, server.url)
        got: list[bytes] = []
        with pytest.raises(Broken) as broken:
            await collect(resp, got)
        assert broken.value.kind == "bad_answer"
        resp.close()
        pool.close()
