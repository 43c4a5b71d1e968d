"""max_body_bytes for the routes FastAPI reads the body of (admin, fine-tuning, usage): it
reads a whole body before any dependency runs, the admin token's check included, so without
this bound anyone could make a replica hold a body of any size (200 MB: 675 MB of memory)
before its 401. The hot routes read theirs with the same bound (api/body.py); a file upload
has its own (files.max_file_bytes)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.body import too_large
from gateway.proxy.asgi_send import send_error


class _Exceeded(Exception):
    """The body went past the bound while the app was reading it."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: frozenset[str]) -> None:
        """`exempt`: paths whose POST bounds its own body (a file upload: files.max_file_bytes)."""
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in self.exempt):
            await self.app(scope, receive, send)
        elif _declared_length(scope) > self.max_bytes:  # refused before a byte is read
            await send_error(send, too_large(self.max_bytes))
        else:
            await _Bounded(self.max_bytes, receive, send).run(self.app, scope)


class _Bounded:
    """One request whose body is counted as the app reads it (chunked, or longer than its
    Content-Length said): past the bound, the app's answer to the failed read becomes a 413."""

    def __init__(self, max_bytes: int, receive: Receive, send: Send) -> None:
        self.max_bytes = max_bytes
        self.receive = receive
        self.send = send
        self.seen = 0
        self.exceeded = False
        self.started = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.counted, self.answer)
        except _Exceeded:
            await self.refuse()

    async def counted(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.max_bytes:
                self.exceeded = True
                raise _Exceeded
        return message

    async def answer(self, message: Message) -> None:
        if self.exceeded:
            await self.refuse()
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)

    async def refuse(self) -> None:
        if not self.started:
            self.started = True
            await send_error(self.send, too_large(self.max_bytes))


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
