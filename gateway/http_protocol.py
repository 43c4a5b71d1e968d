"""The HTTP protocol uvicorn runs for the gateway: uvicorn's httptools protocol, except that a
response's head leaves in the same write as the body that follows it, and that a request can
be told when its client goes away without a task waiting on `receive` (ClientLink).

uvicorn writes the head (status line and headers) the moment the app sends
`http.response.start`, and the body with the next message: two writes, two syscalls and two
TCP segments for every non-streaming answer, and two reads for the client. `HeadWithBody`
holds the head back until the next write, which then carries both. Nothing waits for it: a
head that no write follows in the same turn of the event loop (a stream's, whose first frame
comes later) goes out on its own at the end of that turn, and closing the connection sends it
first. The order of bytes on the connection never changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The scope's extension that carries a request's ClientLink (ASGI: scope["extensions"]).
CLIENT_LINK = "llmaas.client_link"
_STATUS_LINE = b"HTTP/1.1 "
_END_OF_HEAD = b"\r\n\r\n"


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


class ClientLink:
    """A connection's word to the request it is serving: whether its client is gone, and a
    call the moment it goes.

    The proxy must stop the engine's work when the client hangs up. An ASGI app learns that
    from `receive`, which only a task waiting on it hears: a task per request, started and
    cancelled, with a turn of the event loop to see whether the client had already left. The
    connection knows first, with no task: one link per connection, one listener at a time
    (uvicorn serves a connection's requests one after the other).
    """

    __slots__ = ("gone", "listener")

    def __init__(self) -> None:
        self.gone = False
        self.listener: Callable[[], None] | None = None

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call `listener` when the connection is lost (None: call nothing)."""
        self.listener = listener

    def lost(self) -> None:
        self.gone = True
        listener, self.listener = self.listener, None
        if listener is not None:
            listener()


def client_link(scope: Scope) -> ClientLink | None:
    """The request's link, when the gateway's protocol serves it (None under another server)."""
    extension = scope.get("extensions", {}).get(CLIENT_LINK)
    return None if extension is None else cast(ClientLink, extension["link"])


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through HeadWithBody, its requests linked to the
    connection (ClientLink)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped = HeadWithBody(cast(asyncio.Transport, transport), self.loop)
        self.link = ClientLink()
        # One dict for the connection's requests: nobody writes to a scope's extensions.
        self.extensions: dict[str, dict[object, object]] = {CLIENT_LINK: {"link": self.link}}
        super().connection_made(cast(asyncio.Transport, wrapped))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self.extensions

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.link.lost()
