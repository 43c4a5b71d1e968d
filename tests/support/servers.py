"""Run ASGI apps on real sockets inside the test's event loop, so disconnects are real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from gateway.draining_server import started
from gateway.http_protocol import GatewayHttpProtocol
from gateway.netutil import free_port


@asynccontextmanager
async def serve_uvicorn(config: uvicorn.Config) -> AsyncIterator[str]:
    """Run a uvicorn server in this event loop; yield its base URL; shut it down on exit."""
    async with started(uvicorn.Server(config)):
        yield f"http://{config.host}:{config.port}"


def serve_asgi(
    app: ASGIApp, port: int | None = None, *, lifespan: Literal["on", "off"] = "on"
) -> AbstractAsyncContextManager[str]:
    """Serve an app on 127.0.0.1 with the gateway's HTTP protocol; with a lifespan (the
    gateway's) unless `lifespan` is "off"."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port or free_port(),
        loop="none",
        http=GatewayHttpProtocol,  # as `llmaas serve` runs it
        ws="none",  # (no WebSocket, as server.uvicorn_config)
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as server.uvicorn_config: the client is the TCP peer
    )
    return serve_uvicorn(config)
