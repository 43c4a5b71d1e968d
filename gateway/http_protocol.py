"""The HTTP protocol uvicorn runs for the gateway: uvicorn's httptools protocol, except that a
response's head leaves in the same write as the body that follows it, and that a request can
be told when its client goes away without a task waiting on `receive` (ClientLink).

An HTTP/1.0 request's answer is written as such a client reads it (gateway/http10.py).

uvicorn writes the head (status line and headers) the moment the app sends
`http.response.start`, and the body with the next message: two writes, two syscalls and two
TCP segments for every non-streaming answer, and two reads for the client. `HeadWithBody`
holds the head back until the next write, which then carries both. Nothing waits for it: a
head that no write follows in the same turn of the event loop (a stream's, whose first frame
comes later) goes out on its own at the end of that turn, and closing the connection sends it
first. The order of bytes on the connection never changes.

httptools sets no bound on a request's head (its URL and headers): it holds a header until its
end, however long, so one connection could make the process hold hundreds of MiB before any
credential is read. A head past MAX_HEAD_BYTES is answered 431 and the connection closed.

A head must arrive whole within keep_alive_s, and a body as well, plus a second for every
BODY_MIN_RATE bytes of it received (Apache's mod_reqtimeout rule): a client that sent a head
and then part of its body, or its body a byte at a time, held its request's slot (one of
max_inflight_requests) for ever. Nor may a body stop for keep_alive_s (nginx's
client_body_timeout): a burst earned it days (512 MiB at once: 12 days), in which an upload
kept its part on the files volume. A body late is answered 408 and the connection closed; the
request waiting on it hears that its client is gone (nothing reaches an engine), and is counted
and logged as the 408 it was answered, under its own request id. A request refused before the
app saw it (400, 431) is counted and logged by UnreadRefusals (http_refusals.py).

httptools takes a request's Transfer-Encoding whatever codings come before its final
`chunked`, and undoes the chunks only: `gzip, chunked` had its gzip dropped and the body read as
it came. A coding the gateway does not undo is answered 501 (RFC 9112, 6.1) before the app
sees the request; a compressed body goes with Content-Encoding, which it decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from functools import partial
from typing import Any, cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.client_link import CLIENT_LINK, ClientLink
from gateway.errors import InvalidRequest
from gateway.http10 import Unchunked
from gateway.http_refusals import UNREAD_STATE, UnreadRefusals
from gateway.http_upgrade import UpgradeDropped
from gateway.proxy.outcome import Outcome
from gateway.request_context import found_info, new_request_id

_STATUS_LINE = b"HTTP/1.1 "
_END_OF_HEAD = b"\r\n\r\n"
# A request's URL and headers together, to the byte: room for large JWTs and cookies (nginx
# takes 4 x 8 KiB, uvicorn's h11 protocol 16 KiB).
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 2.0  # how long a connection answered before its request was read is read on
# A body's deadline moves a second later for every BODY_MIN_RATE bytes received: an upload of
# any size arrives whole at this average rate or faster.
BODY_MIN_RATE = 500


class HeadWithBody:
    """A transport whose writes of a response head wait for the next write (or the end of
    this event loop turn); every other method is the wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_STATUS_LINE) and data.endswith(_END_OF_HEAD):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (nothing followed it in its turn of the loop)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through HeadWithBody, its requests linked to the
    connection (ClientLink)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = HeadWithBody(cast(asyncio.Transport, transport), self.loop)
        self.link = ClientLink(partial(_reset, cast(asyncio.Transport, transport)))
        # One dict for the connection's requests: nobody writes to a scope's extensions.
        self.extensions: dict[str, dict[object, object]] = {CLIENT_LINK: {"link": self.link}}
        self.head_bytes: int | None = 0  # read of the current request's head; None: in its body
        self.refused = False  # answered before it was read whole (431, 408): read no more
        self.head_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None
        self.body_started = 0.0  # when the current request's body was first awaited
        self.body_bytes = 0  # received since then
        self.body_last = 0.0  # when the last of them came
        self.upgrades = UpgradeDropped()  # the head's `Upgrade` lines taken out (http_upgrade)
        self.head_filtered = True  # every byte of the current head went through `upgrades`
        self.completed_in_read = False  # a request ended within the read being parsed
        self.upgrade_refused = False  # an upgrade got past `upgrades`: answered, read no more
        self.unknown_coding: bytes | None = None  # a Transfer-Encoding not undone: 501
        super().connection_made(cast(asyncio.Transport, wrapped))
        self._await_head()

    def _await_head(self) -> None:
        """Give the next request's head keep_alive_s to arrive whole. uvicorn's keep-alive
        timer alone is cancelled by any byte received, and never armed on a new connection:
        a connection that sent nothing, or a head a byte at a time, was held forever (a few
        thousand such, and the process has no file descriptors left)."""
        self._head_arrived()
        self.head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_late)

    def _head_arrived(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_late(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.refused or self.upgrade_refused:
            return  # what the client sent on before it read the 431, or after an upgrade
        self.completed_in_read = False
        if self.head_bytes is not None:
            before = self.head_bytes
            self.head_bytes += len(data)  # (the head's end resets it, in this feed)
            if self.head_bytes > MAX_HEAD_BYTES and not _ends_head(data, MAX_HEAD_BYTES - before):
                self.head_bytes = None  # refused before httptools holds more of it
                if not self.transport.is_closing():
                    self._refuse_head()
                return
            if self.head_filtered:
                data = self.upgrades.feed(data, begun=before > 0)
        super().data_received(data)
        if self.head_bytes is not None and self.head_bytes > MAX_HEAD_BYTES:
            self.head_bytes = None
            if not self.transport.is_closing():  # (not already refused as malformed)
                self._refuse_head()
        elif self.head_bytes is None and self.body_deadline is None:
            self._await_body()  # a head whose body did not come whole in the same read

    def _await_body(self) -> None:
        if self.transport.is_closing():
            return
        self.body_started = self.body_last = self.loop.time()
        self.body_bytes = 0
        self.body_deadline = self.loop.call_later(self.timeout_keep_alive, self._body_due)

    def _body_due(self) -> None:
        """Its time is up, unless what came since moved it later, or the gateway stopped
        reading (the app has not taken what came: flow control), which starts it again."""
        if self.flow.read_paused:
            self.body_deadline = None
            self._await_body()
            return
        at_rate = self.body_started + self.body_bytes / BODY_MIN_RATE
        due = min(at_rate, self.body_last) + self.timeout_keep_alive
        if due > self.loop.time():
            self.body_deadline = self.loop.call_at(due, self._body_due)
            return
        self.body_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            error = InvalidRequest(
                f"The request's body did not arrive within {self.timeout_keep_alive:g} s and"
                f" a second more for every {BODY_MIN_RATE} bytes received, or stopped for"
                f" {self.timeout_keep_alive:g} s.",
                status=408,
                code="request_timeout",
            )
            info = found_info(cast(Scope, cycle.scope))  # (None: the app has not begun it)
            if info is not None:  # its access log line and count say 408, not 499
                info.status, info.outcome = 408, Outcome.REFUSED
            rid = new_request_id() if info is None else info.request_id
            self.transport.write(_closing_answer(408, error.json(), rid))
        if cycle is not None:  # the request waiting on its body hears its client is gone now
            cycle.disconnected = True
            cycle.message_event.set()
        self._linger()  # (closed at once, a client still sending was reset, its 408 lost)

    def _body_arrived(self) -> None:
        if self.body_deadline is not None:
            self.body_deadline.cancel()
            self.body_deadline = None

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse, in OpenAI's error shape (uvicorn's is plain text):
        every error the gateway answers has the one shape. Or one whose Transfer-Encoding has
        a coding the gateway does not undo (on_headers_complete): 501."""
        if self.unknown_coding is not None:
            coding = self.unknown_coding.decode("latin-1")[:100]
            self.unknown_coding = None
            error = InvalidRequest(
                f"The request's Transfer-Encoding '{coding}' is not supported: only 'chunked'"
                " is (send a compressed body with Content-Encoding: gzip or deflate instead).",
                status=501,
                code="unsupported_transfer_encoding",
            )
            self._unread_refused(501, error)
            self.transport.close()
            return
        error = InvalidRequest(
            "The request is not valid HTTP/1.1 (its request line or a header could not be parsed).",
            code="invalid_http_request",
        )
        self._unread_refused(400, error)
        self.transport.close()

    def _refuse_head(self) -> None:
        error = InvalidRequest(
            f"The request's URL and headers are larger than the limit of {MAX_HEAD_BYTES} bytes.",
            status=431,
            code="request_headers_too_large",
        )
        self._unread_refused(431, error)
        self._linger()

    def _linger(self) -> None:
        """Close after an answer sent while the client may still be sending (a head too large,
        a body late): closed with bytes unread, the connection would be reset, and the client
        would lose the answer (seen: a trickled body's 408). Its end is closed, what it still
        sends read and dropped, until it closes too or LINGER_S passes."""
        self.refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _unread_refused(self, status: int, error: InvalidRequest) -> None:
        rid = new_request_id()
        self.transport.write(_closing_answer(status, error.json(), rid))
        unread: UnreadRefusals | None = self.app_state.get(UNREAD_STATE)
        if unread is not None:  # (an app without the gateway's lifespan: tests)
            unread.refused(status, rid)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self.extensions
        if self.completed_in_read:  # pipelined: its head began in a read that went on unread
            self.head_filtered = False

    def _unsupported_upgrade_warning(self) -> None:
        """httptools took a request for a switch of protocols (`CONNECT`, or an `Upgrade` in a
        pipelined request's head, which `upgrades` did not read) and ended it at its head: the
        request is answered as it was read, the connection closed after it, and nothing more
        read from it. Read on, its body would have been parsed as further requests."""
        self.upgrade_refused = True
        if self.cycle is not None:
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self._head_arrived()
        for name, value in self.headers:
            if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                self.unknown_coding = value
                raise UnknownTransferCoding  # (httptools stops: send_400_response answers)
        super().on_headers_complete()
        cycle = self.cycle
        if self.scope["http_version"] == "1.0" and cycle is not None and cycle.scope is self.scope:
            cycle.transport = cast(asyncio.Transport, Unchunked(cycle.transport))  # no chunks

    def on_body(self, body: bytes) -> None:
        """The body's own bytes are what earns it time (_body_due), not a chunked body's
        framing: chunks of a byte each with a long extension earned ~600 bytes' worth a second
        while the body grew by one (found by review)."""
        self.body_bytes += len(body)
        self.body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.head_bytes = 0  # the next request's head comes next
        self.head_filtered = True  # (unless it begins in this same read: on_message_begin)
        self.completed_in_read = True
        self._body_arrived()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        idle = not self.pipeline  # no request read and waiting: the next head is awaited
        super().on_response_complete()
        if idle and not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        self._body_arrived()
        super().connection_lost(exc)
        self.link.lost()


class UnknownTransferCoding(Exception):
    """Raised in httptools' callback to stop its parsing of the request."""


def _reset(transport: asyncio.Transport) -> None:
    """Drop the connection with a reset (nginx's reset_timedout_connection): a plain close
    still sends what the kernel holds for the client (megabytes on loopback) before its FIN,
    to a client that reads nothing."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _ends_head(data: bytes, room: int) -> bool:
    """Whether the head being read may end within the first `room` bytes of `data`: its blank
    line there, or the rest of one the last read began. Counted to the byte, a head of 64 KiB
    and a little more is refused however the reads split it, and httptools never meets a URL
    past its own limit (65,535 bytes: uvicorn's plain-text 400, not this 431)."""
    end = data.find(_END_OF_HEAD, 0, room + len(_END_OF_HEAD))
    if end != -1 and end + len(_END_OF_HEAD) <= room:
        return True
    return any(data[:k] == _END_OF_HEAD[-k:] for k in (1, 2, 3) if k <= room)


def _closing_answer(status: int, body: bytes, request_id: str) -> bytes:
    """A whole JSON answer after which the connection closes; with a request id, as every
    answer has one (a 400 or 431 comes before the request is read: never the client's)."""
    head = STATUS_LINE[status] + b"content-type: application/json\r\n"
    rid = b"x-request-id: %s\r\n" % request_id.encode()
    return head + rid + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
