"""max_body_bytes for the routes FastAPI reads the body of (admin, fine-tuning, usage): it
reads a whole body before any dependency runs, the admin token's check included, so without
this bound anyone could make a replica hold a body of any size (200 MB: 675 MB of memory)
before its 401. The hot routes read theirs with the same bound (api/body.py); a file upload
has its own (files.max_file_bytes). A body sent compressed (gzip or deflate) is decoded here for
them, within the same bound, as the hot routes decode theirs (api/body_encoding.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.body import too_large
from gateway.api.body_encoding import content_encoding, decode_body
from gateway.api.inflight import charge_decoded
from gateway.errors import ApiError
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
        elif (encoding := content_encoding(scope["headers"])) is not None:
            await self._decoded(scope, encoding, receive, send)
        else:
            await _Bounded(self.max_bytes, receive, send).run(self.app, scope)

    async def _decoded(self, scope: Scope, encoding: str, receive: Receive, send: Send) -> None:
        """The body read whole (bounded), decoded (bounded), and given to the app as if it had
        come so: one message, its length, no Content-Encoding."""
        bounded = _Bounded(self.max_bytes, receive, send)
        chunks: list[bytes] = []
        try:
            while True:
                message = await bounded.counted()
                if message["type"] != "http.request":
                    return  # the client left
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            wire = b"".join(chunks)
            body = decode_body(wire, encoding, self.max_bytes)
            charge_decoded(scope, len(wire), len(body))  # (the bodies in flight count it)
        except _Exceeded:
            await bounded.refuse()
            return
        except ApiError as err:
            await send_error(send, err)
            return
        plain = [(n, v) for n, v in scope["headers"] if n not in _RECODED]
        headers = [*plain, (b"content-length", b"%d" % len(body))]
        given = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return given.pop() if given else await receive()  # then: the disconnect, as sent

        await self.app({**scope, "headers": headers}, replay, send)


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


_RECODED = (b"content-encoding", b"content-length")


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
