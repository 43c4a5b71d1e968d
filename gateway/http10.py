"""Answers to HTTP/1.0 requests, written as HTTP/1.0 clients read them.

uvicorn frames every answer that names no content-length (a stream) in chunks, with
`transfer-encoding: chunked`, whatever the request's version, and answers `Expect:
100-continue` with an interim `100 Continue`. An HTTP/1.0 client knows neither (RFC 9112
§6.1: a server must not send Transfer-Encoding to it; RFC 9110 §15.2: nor a 1xx answer): it
read the chunk sizes as part of the body (`ab`, HTTP/1.0 probes and proxies saw a stream's
frames as `11d\r\ndata: {…}\r\n`). uvicorn closes the connection after an HTTP/1.0 answer,
which ends its body, so the framing can simply be taken off: `Unchunked` sits between one
HTTP/1.0 request's cycle and the connection. HTTP/1.1 requests never meet it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

_CHUNKED = re.compile(rb"\r\ntransfer-encoding: *chunked *(?=\r\n)", re.IGNORECASE)
_INTERIM = b"HTTP/1.1 1"  # a 1xx status line (uvicorn's 100 Continue)


class Unchunked:
    """A transport for one HTTP/1.0 request's answer: its head without `transfer-encoding:
    chunked`, its body without the chunks' framing, no 1xx; every other method is the
    wrapped transport's."""

    __slots__ = ("_chunked", "_head_sent", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head_sent = False
        self._chunked = False

    def write(self, data: bytes) -> None:
        if not self._head_sent:
            if data.startswith(_INTERIM):
                return
            self._head_sent = True
            data, found = _CHUNKED.subn(b"", data, count=1)
            self._chunked = found > 0
        elif self._chunked:
            data = unframed(data)
            if not data:
                return
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def unframed(data: bytes) -> bytes:
    """The payload of whole chunks as uvicorn writes them: `<hex size>\\r\\n<payload>\\r\\n`
    each, `0\\r\\n\\r\\n` at the end of the body."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(data):
        end_of_size = data.index(b"\r\n", pos)
        size = int(data[pos:end_of_size], 16)
        if size == 0:
            break
        start = end_of_size + 2
        parts.append(data[start : start + size])
        pos = start + size + 2
    return b"".join(parts)
