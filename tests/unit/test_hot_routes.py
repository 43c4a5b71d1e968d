"""HotRoutes: the inference POSTs go straight to their handlers, everything else to FastAPI;
and the hot routes are the very handlers FastAPI has for the same paths."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.api.hot_routes import HotRoutes
from gateway.app import HOT_ROUTES, ROUTERS, create_app
from gateway.auth.principal import ANONYMOUS, Principal
from gateway.errors import InvalidRequest, Unauthorized
from gateway.limits.control import AdmissionControl
from gateway.metrics import Metrics
from gateway.settings import LimitsSettings, Settings
from gateway.state import GatewayState

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Auth:
    async def principal(self, headers: Headers) -> Principal:
        if headers.get("authorization") != "Bearer good":
            raise Unauthorized("no", code="invalid_api_key")
        return ANONYMOUS


async def call(app: HotRoutes, method: str, path: str, token: str = "good") -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    admission = AdmissionControl(None, LimitsSettings(), Metrics())
    state = SimpleNamespace(gateway=SimpleNamespace(auth=Auth(), admission=admission))
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "app": SimpleNamespace(state=state),
    }
    await app(scope, receive, send)
    return sent


def hot_app() -> tuple[HotRoutes, list[str]]:
    framework: list[str] = []

    async def fastapi(scope: Scope, receive: Receive, send: Send) -> None:
        framework.append(f"{scope['method']} {scope['path']}")
        await Response(b"framework")(scope, receive, send)

    async def chat(request: Request, gw: GatewayState, caller: Principal) -> Response:
        if request.headers.get("x-fail"):
            raise InvalidRequest("bad", param="messages")
        return Response(b"hot")

    return HotRoutes(fastapi, {"/v1/chat/completions": chat}), framework


async def test_a_hot_post_skips_the_framework_and_everything_else_reaches_it() -> None:
    app, framework = hot_app()
    assert (await call(app, "POST", "/v1/chat/completions"))[1]["body"] == b"hot"
    for method, path in [("GET", "/v1/chat/completions"), ("POST", "/v1/chat/completions/")]:
        assert (await call(app, method, path))[1]["body"] == b"framework"
    assert framework == ["GET /v1/chat/completions", "POST /v1/chat/completions/"]


async def test_errors_on_a_hot_route_are_the_one_json_shape() -> None:
    app, _ = hot_app()
    start, body = await call(app, "POST", "/v1/chat/completions", token="wrong")
    assert start["status"] == 401
    assert orjson.loads(body["body"])["error"]["code"] == "invalid_api_key"


async def test_hot_routes_are_fastapis_own_post_handlers_for_those_paths() -> None:
    posts = {
        r.path: r.endpoint
        for router in ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute) and "POST" in (r.methods or ())
    }
    for path, handler in HOT_ROUTES.items():
        assert posts.get(path) is handler, path
    assert set(HOT_ROUTES) <= set(create_app(Settings(dev_mode=True)).openapi()["paths"])
