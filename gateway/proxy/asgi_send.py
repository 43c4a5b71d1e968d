"""Tiny helpers that write whole responses straight to an ASGI `send`, and its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from starlette.types import Message, Send

from gateway.errors import ApiError

JSON = b"application/json"


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError) -> None:
    headers = [(b"content-type", JSON)]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    body = error.json()
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


class WriteDeadline:
    """The client's `send`, each call given `timeout_s` to be taken, else the work is cancelled.

    uvicorn's `send` waits while the connection's write buffer is full, so a client that stops
    reading would hold the response (and its engine request) forever. A timer per frame would
    cost a heap push per frame; instead one timer per response, armed at the first send and
    re-armed only when it fires: at most one wake-up per `timeout_s` while the stream flows.
    """

    __slots__ = (
        "answered",
        "expired",
        "handle",
        "loop",
        "send",
        "sending_since",
        "started",
        "task",
        "timeout_s",
    )

    def __init__(self, send: Send, timeout_s: float) -> None:
        self.send = send
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.task: Cancellable | None = None  # what a missed deadline cancels
        self.handle: asyncio.TimerHandle | None = None
        self.sending_since: float | None = None
        self.expired = False  # the client did not take a write in time
        # The response's last message went out: the client has it all (a disconnect from now
        # on is the client closing after it, not leaving halfway).
        self.answered = False
        self.started = False  # the response's head went (or is going) out

    async def __call__(self, message: Message) -> None:
        self.started = True  # (the first message is the head)
        now = self.loop.time()
        self.sending_since = now
        if self.handle is None:
            self.handle = self.loop.call_at(now + self.timeout_s, self._check)
        try:
            await self.send(message)
        finally:
            self.sending_since = None
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered = True

    def _check(self) -> None:
        since = self.sending_since
        if since is None:  # idle between sends: the next send arms it again
            self.handle = None
            return
        due = since + self.timeout_s
        if self.loop.time() < due:
            self.handle = self.loop.call_at(due, self._check)
            return
        self.handle = None
        if self.task is not None and self.task.cancel():
            self.expired = True

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
