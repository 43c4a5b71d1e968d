"""The inference routes, served without the framework's per-request work.

A POST to /v1/chat/completions (and the other routes that carry the traffic) goes straight
from the gateway's own gates to its handler: authenticate, then the same handler function
FastAPI would call. FastAPI's layers (its error and body-limit middlewares, routing,
dependency resolution, an exit stack, and a `send` wrapper per layer) cost about a fifth of
the gateway's CPU per request (bench/README.md, `python -m bench.profile`) and add nothing
these handlers use: they read their own body, and an error is the one JSON shape either way.
Everything else (another method, any other path) goes to FastAPI, which also still lists
these routes in /openapi.json.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.error_handlers import store_unavailable_error
from gateway.auth.principal import Principal
from gateway.deps import authenticate, get_state
from gateway.errors import ApiError
from gateway.proxy.asgi_send import send_error
from gateway.state import GatewayState

Handler = Callable[[Request, GatewayState, Principal], Awaitable[Response]]


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: Mapping[str, Handler]) -> None:
        """`routes`: exact paths whose POST goes to the handler; `app` serves everything else."""
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:  # the same dependencies FastAPI would have resolved (gateway/deps.py)
            gw = await get_state(request)
            caller = await authenticate(request)
            held = gw.admission.hold(caller)  # its concurrency, before the body is read
        except ApiError as err:
            await send_error(send, err)
            return
        try:
            try:
                response = await handler(request, gw, caller)
            except ApiError as err:
                await send_error(send, err)
                return
            except RedisError as exc:  # (a route's own reads: FastAPI's handler answers alike)
                await send_error(send, store_unavailable_error(scope["path"], exc))
                return
            await response(scope, receive, send)
        finally:
            if held is not None:
                held.release()
