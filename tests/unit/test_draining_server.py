"""gateway/draining_server.py: what the server does once its app has started."""

from __future__ import annotations

import gc

import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.draining_server import DrainingServer, started
from gateway.netutil import free_port


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("not called: the test sends no request")


async def test_a_started_server_has_frozen_what_startup_built() -> None:
    gc.unfreeze()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=free_port(), loop="none", lifespan="off", log_level="warning"
    )
    try:
        assert gc.get_freeze_count() == 0
        async with started(DrainingServer(config, grace_s=1.0)):
            # The full collections of a busy server no longer walk what startup left.
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
