"""The admin API's token, checked from the headers before anything else of a request is read.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so the
admin API's own check (admin.require_admin) came only after the gateway had taken the body in:
anyone, with no token, could make a process hold up to max_body_bytes for each connection that
sent a body and stopped short of its end. This gate answers a missing or wrong token at once.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Unauthorized
from gateway.proxy.asgi_send import send_error

PREFIX = "/admin/v1/"


def admin_token_ok(authorization: str | None, expected: str | None) -> bool:
    """Whether an Authorization header carries the admin token (never, if none is set)."""
    scheme, _, token = (authorization or "").partition(" ")
    return (
        expected is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), expected.encode())
    )


def admin_unauthorized() -> Unauthorized:
    return Unauthorized(
        "The admin API needs 'Authorization: Bearer <admin token>'.", code="invalid_api_key"
    )


class AdminGate:
    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(PREFIX)
            and not admin_token_ok(Headers(scope=scope).get("authorization"), self.token)
        ):
            await send_error(send, admin_unauthorized())
            return
        await self.app(scope, receive, send)
