"""Credentials checked from the headers, before anything else of a request is read.

FastAPI reads and parses a route's JSON body before it runs the route's dependencies, so the
checks that are dependencies (admin.require_admin, deps.authenticate) came only after the
gateway had taken the body in: anyone, with no credential, could make a process hold up to
max_body_bytes for each connection that sent a body and stopped short of its end. This gate
answers a missing or wrong admin token on /admin/v1, and a missing or invalid key or token on
the /v1 routes FastAPI reads a body for (fine-tuning jobs), at once. (The inference routes and
file uploads check the key before their bodies already.)
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticate import bearer
from gateway.errors import ApiError, Unauthorized
from gateway.proxy.asgi_send import send_error

ADMIN = "/admin/v1/"
TENANT_BODIES = "/v1/fine_tuning/"  # FastAPI routes under /v1 that take a JSON body


def admin_token_ok(headers: Headers, expected: str | None) -> bool:
    """Whether the request's Authorization header carries the admin token (never, if none is
    set); two such headers are a 401 (authenticate.bearer)."""
    token = bearer(headers)
    return (
        expected is not None
        and token is not None
        and hmac.compare_digest(token.encode(), expected.encode())
    )


def admin_unauthorized(headers: Headers, expected: str | None) -> Unauthorized:
    """The 401 of a request admin_token_ok refused, saying which of the three it was: a wrong
    token read as a missing one ("needs 'Authorization: Bearer …'")."""
    if bearer(headers) is None:
        said = "The admin API needs 'Authorization: Bearer <admin token>'."
    elif expected is None:
        said = "The admin API is off on this gateway: it has no admin_token set."
    else:
        said = "Incorrect admin token provided."
    return Unauthorized(said, code="invalid_api_key")


class CredentialGate:
    def __init__(self, app: ASGIApp, *, admin_token: str | None) -> None:
        self.app = app
        self.admin_token = admin_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        try:
            if path.startswith(ADMIN):
                headers = Headers(scope=scope)
                if not admin_token_ok(headers, self.admin_token):
                    raise admin_unauthorized(headers, self.admin_token)
            elif path.startswith(TENANT_BODIES) and scope["method"] == "POST":
                state = getattr(scope["app"].state, "gateway", None)
                if state is not None:  # (None before startup is done: the route answers)
                    await state.auth.principal(Headers(scope=scope))  # cached for the route
        except ApiError as refused:
            await send_error(send, refused)
            return
        await self.app(scope, receive, send)
