"""A file's contents streamed to a client that must keep taking them.

uvicorn's `send` waits while the connection's write buffer is full: a download whose client
stopped reading held its request slot (one of max_inflight_requests) and its file open for as
long as the client kept the connection, past `upstream.write_timeout_s`, the bound every
proxied answer has (three paused downloads made a replica with 3 slots answer 503 to all).
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.client_link import drop_client
from gateway.proxy.outcome import Outcome
from gateway.request_context import info_of


class DownloadResponse(StreamingResponse):
    """A StreamingResponse each of whose writes the client must take within
    `write_timeout_s`, else its connection is reset and the download ends (slow_client)."""

    def __init__(self, *args: object, write_timeout_s: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.write_timeout_s = write_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed(message: Message) -> None:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await send(message)
            except TimeoutError:
                info_of(scope).outcome = Outcome.SLOW_CLIENT
                if not await drop_client(scope):  # (it hears its client gone: cancelled)
                    raise

        await super().__call__(scope, receive, timed)
