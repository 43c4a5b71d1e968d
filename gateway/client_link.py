"""A connection's word to the request it is serving (GatewayHttpProtocol puts one in each
request's scope, extension `llmaas.client_link`): whether its client is gone, a call the moment
it goes, and a way to drop it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from starlette.types import Scope

# The scope's extension that carries a request's ClientLink (ASGI: scope["extensions"]).
CLIENT_LINK = "llmaas.client_link"


class ClientLink:
    """A connection's word to the request it is serving: whether its client is gone, and a
    call the moment it goes.

    The proxy must stop the engine's work when the client hangs up. An ASGI app learns that
    from `receive`, which only a task waiting on it hears: a task per request, started and
    cancelled, with a turn of the event loop to see whether the client had already left. The
    connection knows first, with no task: one link per connection, one listener at a time
    (uvicorn serves a connection's requests one after the other).
    """

    __slots__ = ("abort", "gone", "listener")

    def __init__(self, abort: Callable[[], None] = lambda: None) -> None:
        self.gone = False
        self.listener: Callable[[], None] | None = None
        # Drop the connection now, unsent bytes and all: a client cut for not reading (a
        # graceful close waits for it to read what is queued, which it never does).
        self.abort = abort

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


async def drop_client(scope: Scope) -> bool:
    """Reset the connection of a client cut for not reading (a graceful close waits for it to
    read what is queued: its socket and megabytes of unsent answer stayed as long as it kept
    the connection), and let the server hear it gone before the request returns (else it logs
    the unfinished answer as an error). False under another server: nothing to drop."""
    link = client_link(scope)
    if link is None:
        return False
    link.abort()
    await asyncio.sleep(0)  # connection_lost runs
    return True
