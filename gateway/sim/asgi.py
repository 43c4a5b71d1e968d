"""Raw ASGI plumbing: read the body, answer, watch for the client going away, drop the connection.

Dropping a connection on purpose: ASGI has no "abort" message, and an exception before
``http.response.start`` makes uvicorn answer 500. What uvicorn (both its httptools and h11
protocols) does instead when the application returns a value other than None is to close the
transport at once, whatever was or was not sent. So a handler raises `DropConnection`, the
endpoint marks the scope, and `SimApp` (app.py) returns `DROPPED` to the server: no status
line at all before the headers, or a truncated body / unterminated chunked stream after them.
uvicorn logs one "ASGI callable should return None" error line per dropped connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final

from starlette.types import Receive, Scope, Send

DROP_SCOPE_KEY: Final = "llmaas.sim.drop"
DROPPED: Final = "connection dropped on purpose by the simulator (sim.drop / sim.cut_after)"
JSON_HEADERS: Final = ((b"content-type", b"application/json"),)
SSE_HEADERS: Final = [(b"content-type", b"text/event-stream; charset=utf-8")]


class DropConnection(Exception):
    """Close the client's connection now, without (the rest of) the response."""


def request_headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(work: Coroutine[Any, Any, None], receive: Receive) -> None:
    """Run `work`, cancelling it as soon as the client disconnects (even while it sleeps).

    Returns once `work` has finished or has been cancelled and has run its cleanup; re-raises
    what `work` raised.
    """
    task = asyncio.create_task(work)
    watcher = asyncio.create_task(wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if not task.cancelled():
        task.result()


class Reply:
    """Sends one HTTP response over ASGI."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, payload: bytes) -> None:
        headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await self.start(status, headers)
        await self.body(payload)

    async def truncated_json(self, status: int, payload: bytes) -> None:
        """Announce the whole body, send half of it, then drop the connection."""
        headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await self.start(status, headers)
        await self.body(payload[: len(payload) // 2], more=True)
        raise DropConnection
