"""A lean HTTP/1.1 client for the engines: a connection and its response, httptools parsing
(the keep-alive pool that sends requests over them: h1_pool.py).

Every proxied request pays its client's cost; measured on this path, aiohttp's request and
response objects took ~200 µs of CPU per request where this client takes ~45 µs
(bench/README.md). It does only what the proxy needs: one request at a time per connection, a
body given whole, the status and content type of the answer, and its body as it arrives (chunked
or sized, httptools decodes either). A connection knows whether it closed as a request crossed
it (closed within `CROSSING_S` of the write, before any byte of an answer). A response that was
not read to its end is never reused: closing it closes the connection, which is how the engine
learns to abort the request.

Reads are bounded by an idle timeout (nothing received for that long), checked by one timer per
response that moves on only when it fires: no timer per chunk. A slow reader pauses the socket
once `HIGH_WATER` bytes wait (the engine is then held back by TCP, as with aiohttp).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools

if TYPE_CHECKING:
    from gateway.proxy.h1_pool import H1Pool  # (which imports this module)

HIGH_WATER = 256 * 1024  # bytes received and not yet read: stop reading from the socket
# A kept connection that closes this soon after the request was written, before any byte of an
# answer, closed as the request crossed it: the request goes once more on a new connection.
# Closing later, the engine had it (it may have read it and begun): the caller moves on instead.
CROSSING_S = 0.1


class ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class Disconnected(Exception):
    """The engine closed the connection, or sent what is not HTTP, before the answer ended."""


class NotHttp(Disconnected):
    """What the engine sent is not HTTP (the connection is closed for it)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an engine URL points: host, port, TLS, and the path its routes sit under."""

    host: str
    port: int
    tls: bool
    prefix: str  # "" or "/some/path"
    authority: bytes  # the Host header

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if tls else 80)
        return cls(host, port, tls, parts.path.rstrip("/"), parts.netloc.encode())


class Connection(asyncio.Protocol):
    """One keep-alive connection; the state of the answer it is reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.closed_at = 0.0  # loop time of the close the engine made (connection_lost)
        self.idle_timer: asyncio.TimerHandle | None = None  # one per answer, while it is read
        self._reset()

    def _reset(self) -> None:
        self._disarm()
        self.status = 0
        self.content_type = ""
        self.content_encoding = ""  # "" (identity) unless the engine encoded the body
        self.interim = False  # the head read is a 1xx one: the answer's own comes after it
        self.headers_done = False
        self.complete = False
        self.framed = False  # sized or chunked (else the body ends when the connection does)
        self.keep_alive = True
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last_read = self.loop.time()
        self.busy = False  # a request is on it (an idle connection that hears data is broken)
        self.heard = False  # a byte of this answer arrived
        self.stray = False  # bytes past this answer's end began another one: ignored, not kept

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        # The head is awaited from the request's write (`last_read` stays there until it
        # ends): an engine that trickled its head a line at a time was never timed out.
        head = self.headers_done
        if head:
            self.last_read = self.loop.time()
        self.heard = True
        if not self.busy:
            self._fail(Disconnected("data on an idle connection"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(NotHttp(str(exc)))
        if not head and self.headers_done:  # the head ended here: silences count from now
            self.last_read = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closed_at = self.loop.time()
        if self.headers_done and not self.framed and not self.complete:
            self.complete = True  # the body ran to the end of the connection
            self._wake()
            return
        if not self.complete:
            self.error = self.error or Disconnected(str(exc) if exc else "connection closed")
            self._wake()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # an answer the engine sent after the one asked (past its length)
            self.stray = True
            self.keep_alive = False  # so the connection is not used again
        elif self.interim:  # the answer after a 100 Continue or 103 Early Hints: its own head
            self.interim = False
            self.content_type, self.content_encoding, self.framed = "", "", False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stray:
            return
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        elif lower == b"content-encoding" and value.strip().lower() != b"identity":
            self.content_encoding = value.decode("latin-1").strip()
        elif lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.stray:
            return
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            # An interim answer (RFC 9110 15.2): the final one follows on this connection.
            # Taken for the answer, its end made the connection look free, and the real
            # answer went to the next request sent on it (another tenant's).
            self.interim = True
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.stray:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            return
        self.complete = True
        self._wake()

    # the reader's side
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.close()
        self._wake()

    async def wait(self, idle_s: float | None) -> None:
        """Until something happens (headers, body, the end, an error); TimeoutError when
        nothing arrived for `idle_s`. The timer is armed once and stays armed across waits."""
        self.waiter = self.loop.create_future()
        if idle_s is not None and self.idle_timer is None:
            self.idle_timer = self.loop.call_at(self.last_read + idle_s, self._idle_check, idle_s)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _idle_check(self, idle_s: float) -> None:
        self.idle_timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():  # not waiting: the next wait arms it again
            return
        due = self.last_read + idle_s
        if self.loop.time() < due:  # data came meanwhile: look again then
            self.idle_timer = self.loop.call_at(due, self._idle_check, idle_s)
            return
        waiter.set_exception(TimeoutError(f"nothing received for {idle_s:g}s"))

    def _disarm(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def crossed(self) -> bool:
        """Whether the engine's close crossed the request just written: it came with no byte
        of an answer, within CROSSING_S of the write (`last_read` is the write's time)."""
        return not self.heard and self.closed_at - self.last_read < CROSSING_S

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


Broken = Callable[[str, BaseException], Exception]  # ("timeout" | "stream_cut" | "disconnect")


class H1Response:
    """The engine's answer on one connection. A read that fails raises what `broken` makes
    of the failure's kind and cause (gateway/proxy/upstream.py: UpstreamBroken)."""

    __slots__ = (
        "_broken",
        "_conn",
        "_idle_s",
        "_on_done",
        "_pool",
        "content_encoding",
        "content_type",
        "status",
    )

    def __init__(
        self,
        conn: Connection,
        pool: H1Pool,
        idle_s: float | None,
        broken: Broken,
        on_done: Callable[[bool], None],
    ) -> None:
        self._conn: Connection | None = conn
        self._pool = pool
        self._idle_s = idle_s
        self._broken = broken
        self._on_done: Callable[[bool], None] | None = on_done
        self.status = conn.status
        self.content_type = conn.content_type
        self.content_encoding = conn.content_encoding

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await self._more(conn, "stream_cut")

    async def read(self) -> bytes:
        """The whole answer. What came is taken as it piles up: reading pauses past HIGH_WATER
        until it is taken, so an answer larger than that (six embeddings of 4,096 dimensions)
        stalled until the idle timeout, a 504 that ejected a healthy engine."""
        conn = self._conn
        assert conn is not None
        parts: list[bytes] = []
        while not conn.complete:
            if conn.paused:
                parts.append(conn.take())  # (resumes reading)
            await self._more(conn, "disconnect")
        if not parts:
            return conn.take()
        parts.append(conn.take())
        return b"".join(parts)

    async def _more(self, conn: Connection, cut: str) -> None:
        """Wait for more of the answer; a failure raises what `broken` makes of it."""
        try:
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._idle_s)
        except TimeoutError as exc:
            raise self._broken("timeout", exc) from exc
        except NotHttp as exc:  # (garbage midway: the engine's fault, not a cut)
            raise self._broken("bad_answer", exc) from exc
        except Disconnected as exc:
            raise self._broken(cut, exc) from exc

    def received(self) -> bytes:
        """What arrived and was not read yet, without waiting (b"" once closed): what the
        engine sent before a client that left was noticed, to be billed."""
        conn = self._conn
        return conn.take() if conn is not None and conn.chunks else b""

    def release(self) -> None:
        """Read to the end: the connection goes back to the pool (if it may be reused)."""
        conn, self._conn = self._conn, None
        whole = conn is not None and conn.complete and conn.error is None
        if conn is not None:
            self._pool.put(conn)
        self._done(whole)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._done(False)

    def _done(self, whole: bool) -> None:
        """`on_done` hears it once: whether the answer was read to its end."""
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(whole)
