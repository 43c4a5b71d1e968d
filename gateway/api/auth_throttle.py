"""Turn away, with 429 and Retry-After, a client whose requests keep failing authentication.

The client is the TCP peer address (X-Forwarded-For is not trusted: behind a proxy, the proxy
is the one client). Its requests are refused before any route runs, so they touch no Redis,
except those carrying an API key this process has already verified and still holds as valid
(`Authenticator.recognises`, from memory alone): one client sending bad keys through a shared
address or proxy does not lock out the keys in use behind it. A client may also have no more
distinct credentials being checked at once than its failures leave room for (the same one
sent many times counts once; a recognised key is let through past that too): a burst of bad
keys sent together passed the limit whole, since a 401 is known only once answered. It sits
inside the request context (gateway/api/middleware.py), whose info tells it the status.

The ops routes take part too, since the admin token opens them: a wrong token on /metrics is a
401 like any other, and a throttled client gets 429 there. Their failures are counted apart
from the other routes' (`_client`): bad API keys from an address do not turn its operator away
from the admin API, nor admin token guesses its API keys. Readiness is never refused (a
probe from a throttled address still learns whether the pod is ready): a wrong token on
/readyz counts as a failure, and a throttled client's token is not read (the bare status).
/healthz reads no token.
"""

from __future__ import annotations

import math

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.health import ops_token_given
from gateway.auth.authenticate import Authenticator
from gateway.auth.failures import FailureThrottle
from gateway.errors import RateLimited
from gateway.proxy.asgi_send import send_error
from gateway.request_context import info_of

_READINESS = "/readyz"
_OPS_PATHS = frozenset({"/metrics", _READINESS})
_ADMIN = "/admin/"
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"api-key"})


class AuthFailureThrottle:
    def __init__(self, app: ASGIApp, *, throttle: FailureThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        wait = self.throttle.retry_after(client)
        if scope["path"] == _READINESS:
            await self._readiness(scope, receive, send, client, throttled=wait is not None)
            return
        if wait is not None and not _recognised(scope):
            await send_error(send, _refusal(math.ceil(wait)))
            return
        credential = _credential(scope)
        checked = self.throttle.begin(client, credential)
        if not checked and not _recognised(scope):  # too many others being checked at once
            await send_error(send, _refusal(1))
            return
        try:
            await self.app(scope, receive, send)
        finally:  # the status the request context saw go out (middleware.py)
            if checked:
                self.throttle.end(client, credential)
            if info_of(scope).status == 401:
                self.throttle.failed(client)

    async def _readiness(
        self, scope: Scope, receive: Receive, send: Send, client: str, *, throttled: bool
    ) -> None:
        state = getattr(scope["app"].state, "gateway", None)
        if throttled:
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            scope = {**scope, "headers": headers}
        elif (
            state is not None
            and "authorization" in Headers(scope=scope)
            and not ops_token_given(Request(scope), state.settings)
        ):
            self.throttle.failed(client)
        await self.app(scope, receive, send)


def _client(scope: Scope) -> str:
    """Whose failures a request counts with: its peer address's, apart for the routes the
    admin and metrics tokens open (/admin, /metrics, /readyz) and for the others, so that bad
    API keys sent through a shared address or proxy do not lock the operator out of revoking
    them (and guesses of the admin token do not lock out the keys in use there)."""
    peer = scope["client"][0] if scope.get("client") else "unknown"
    path: str = scope["path"]
    ops = path in _OPS_PATHS or path.startswith(_ADMIN)
    return f"{peer} ops" if ops else peer


def _credential(scope: Scope) -> bytes:
    """What the request presents to be checked (b"": nothing)."""
    for name, value in scope["headers"]:
        if name in _CREDENTIAL_HEADERS:
            return bytes(value)
    return b""


def _recognised(scope: Scope) -> bool:
    """Whether the request's API key is one the gateway knows as valid without asking Redis."""
    state = getattr(scope["app"].state, "gateway", None)  # (None before startup is done)
    auth: Authenticator | None = None if state is None else state.auth
    return auth is not None and auth.recognises(Headers(scope=scope))


def _refusal(retry_after_s: int) -> RateLimited:
    return RateLimited(
        f"Too many failed authentication attempts from this address; "
        f"retry after {retry_after_s} s.",
        kind="requests",
        scope="client",
        limit_kind="auth_failures",
        code="too_many_auth_failures",
        headers={"retry-after": str(retry_after_s)},
    )
