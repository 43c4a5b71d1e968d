"""Running the gateway under uvicorn (uvloop + httptools), with one or many worker processes."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings, load_settings

CONFIG_ENV = "LLMAAS_CONFIG_FILE"


def app_from_env() -> FastAPI:
    """The uvicorn factory each worker process calls: settings from the file named in the env."""
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_settings(Path(path) if path else None))


def run_server(settings: Settings, config_path: Path | None) -> None:
    """Serve until SIGINT/SIGTERM. Several workers re-read the config file in each process."""
    target: str | FastAPI = create_app(settings)
    if settings.workers > 1:
        if config_path is not None:
            os.environ[CONFIG_ENV] = str(config_path.resolve())
        # Metrics from every worker are aggregated through files in this directory.
        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="llmaas-metrics-")
        )
        target = "gateway.server:app_from_env"
    uvicorn.run(
        target,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


@asynccontextmanager
async def started(server: uvicorn.Server) -> AsyncIterator[asyncio.Task[None]]:
    """Run `server` in this event loop; enter once it listens; on exit ask it to stop."""
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no startup event to await
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield task
    finally:
        server.should_exit = True
        await task
