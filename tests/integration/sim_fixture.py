"""Simulator engines on real sockets for tests: in this event loop, or as a child process."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp

from gateway.netutil import free_port, wait_http_ok
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from gateway.sim.server import server_args, uvicorn_config
from tests.support.servers import serve_uvicorn

HOST = "127.0.0.1"


def running_sim(config: SimConfig, port: int | None = None) -> AbstractAsyncContextManager[str]:
    """Serve a simulator inside the running event loop; yield its base URL (no /v1)."""
    app = create_sim_app(config)
    return serve_uvicorn(uvicorn_config(app, HOST, port or free_port(), loop="none"))


@asynccontextmanager
async def running_sim_process(
    config: SimConfig, port: int | None = None, *, startup_timeout_s: float = 30.0
) -> AsyncIterator[str]:
    """Run `python -m gateway.sim.server` as a child process; yield its base URL."""
    port = port or free_port()
    argv = [sys.executable, "-m", "gateway.sim.server", *server_args(config, HOST, port)]
    process = await asyncio.create_subprocess_exec(*argv)
    try:
        url = f"http://{HOST}:{port}"
        await wait_http_ok(f"{url}/health", timeout_s=startup_timeout_s, interval_s=0.05)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def sim_state(http: aiohttp.ClientSession, sim: str) -> dict[str, Any]:
    """The simulator's GET /sim/state."""
    async with http.get(f"{sim}/sim/state") as resp:
        state: dict[str, Any] = await resp.json()
        return state


async def wait_running(
    http: aiohttp.ClientSession, sim: str, expected: int, deadline_s: float = 5.0
) -> None:
    """Poll until the simulator runs exactly `expected` requests; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while (running := (await sim_state(http, sim))["running"]) != expected:
        assert time.monotonic() < deadline, f"running stayed {running}, expected {expected}"
        await asyncio.sleep(0.02)
