"""Knowing that a request's client left before its answer was whole.

Under the gateway's protocol the connection says so itself (client_link.ClientLink): no task.
Under any other server (an app called in process) a task waits on the ASGI `receive` for its
`http.disconnect`, as the proxy did for every request before the link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import Receive, Scope

from gateway.client_link import ClientLink, client_link


class Departure:
    __slots__ = ("closed", "left", "link", "watcher")

    def __init__(self, scope: Scope, receive: Receive, left: Callable[[], None]) -> None:
        """`left` is called once if the client leaves before `close`."""
        self.left = left
        self.closed = False
        self.link: ClientLink | None = client_link(scope)
        self.watcher: asyncio.Future[None] | None = None
        if self.link is not None:
            self.link.listen(left)
        else:
            self.watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
            self.watcher.add_done_callback(self._watched)

    async def gone(self) -> bool:
        """Whether the client had already left when the request's work began (then `left` is
        not called)."""
        if self.link is not None:
            return self.link.gone
        assert self.watcher is not None
        await asyncio.sleep(0)  # the watcher's first turn: a disconnect already known ends it
        return self.watcher.done()

    def close(self) -> None:
        """The work is over: `left` is not called from now on."""
        self.closed = True
        if self.link is not None:
            if self.link.listener is self.left:  # (the connection's next request may listen)
                self.link.listen(None)
        elif self.watcher is not None:
            self.watcher.remove_done_callback(self._watched)
            self.watcher.cancel()

    def _watched(self, _: asyncio.Future[None]) -> None:
        if not self.closed:  # (a done callback already scheduled is not taken back by close)
            self.left()


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
