from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.middleware import RequestContextMiddleware

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def boom(_: Request) -> Response:
    raise RuntimeError("secret internals must not leak")


async def test_unhandled_error_is_an_openai_500_with_the_request_id() -> None:
    # As in create_app: inside Starlette's ServerErrorMiddleware, outside its ExceptionMiddleware.
    app = Starlette(
        routes=[Route("/boom", boom)],
        middleware=[Middleware(RequestContextMiddleware, access_log=False)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.get("/boom", headers={"x-request-id": "r-1"})
    assert resp.status_code == 500
    assert resp.headers["x-request-id"] == "r-1"
    assert resp.json() == {
        "error": {
            "message": "The gateway failed unexpectedly.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
