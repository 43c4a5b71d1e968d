"""Tiny helpers that write whole responses straight to an ASGI `send`."""

from __future__ import annotations

from starlette.types import Send

from gateway.errors import ApiError

JSON = b"application/json"


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError) -> None:
    headers = [(b"content-type", JSON)]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    body = error.json()
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
