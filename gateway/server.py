"""Running the gateway under uvicorn (uvloop + httptools), with one or many worker processes:
one DrainingServer (draining_server.py), or DrainingWorkers of them (workers.py)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.draining_server import DrainingServer
from gateway.http_protocol import GatewayHttpProtocol
from gateway.logs import configure_logging_single_threaded
from gateway.metrics import forget_earlier_runs
from gateway.settings import Settings
from gateway.settings_load import (
    ConfigError,
    load_settings,
)
from gateway.workers import (
    GRACE_ENV,
    WORKER_ANSWER_S,
    DrainingWorkers,
    PinnedConfig,
)

CONFIG_ENV = "LLMAAS_CONFIG_FILE"
_log = logging.getLogger("llmaas.server")


def app_from_env() -> FastAPI:
    """The uvicorn factory each worker process calls: settings from the file named in the env."""
    path = os.environ.get(CONFIG_ENV)
    return create_app(load_settings(Path(path) if path else None))


def uvicorn_config(
    target: str | FastAPI, settings: Settings, *, port: int, loop: str, **more: Any
) -> uvicorn.Config:
    """How uvicorn serves the gateway wherever it runs (`llmaas serve`, `llmaas up`): our HTTP
    protocol (a response's head and body in one write), idle connections kept `keep_alive_s`
    (a float, which uvicorn's call_later takes; its annotation says int), no access log of its
    own, and the client is the TCP peer: X-Forwarded-For is not trusted, not even from
    localhost (the auth-failure throttle counts by the peer), and no WebSocket. `more`: further
    options."""
    return uvicorn.Config(
        target,
        host=settings.host,
        port=port,
        loop=loop,
        http=GatewayHttpProtocol,
        ws="none",  # no WebSocket: an `Upgrade` is served as plain HTTP (http_upgrade.py)
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type, unused-ignore]
        log_level="warning",
        log_config=None,  # its loggers write our JSON lines (gateway/logs.py), not plain text
        access_log=False,
        proxy_headers=False,
        **more,
    )


def run_server(settings: Settings, config_path: Path | None) -> None:
    """Serve until SIGINT/SIGTERM, then drain (DrainingServer). Several workers read the
    config file in each process, the copy the supervisor pinned (PinnedConfig). Raises
    ConfigError if the file changed for the worse since `settings` were read from it."""
    # Until the server's own handler (a log line, or the supervisor's reload): SIGHUP's default
    # action killed a gateway still starting. (`llmaas serve` ignores it from its first
    # statement, gateway/entry.py; this is for a caller of run_server, or of gateway.cli.)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    forget_earlier_runs()  # (in an operator's metrics directory)
    target: str | FastAPI = create_app(settings)
    made: Path | None = None  # the metrics directory made here (removed at the end)
    pinned: PinnedConfig | None = None
    if settings.workers > 1:
        # (without --config the workers read no file: not one the supervisor never checked)
        os.environ.pop(CONFIG_ENV, None)
        if config_path is not None:
            pinned = PinnedConfig(config_path)
            try:
                pinned.take()
            except BaseException as exc:
                shutil.rmtree(pinned.dir, ignore_errors=True)
                if isinstance(exc, OSError):  # (gone since it was read: said as then)
                    raise ConfigError(str(exc)) from None
                raise
            os.environ[CONFIG_ENV] = str(pinned.path)
        # Metrics from every worker are aggregated through files in this directory.
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            made = Path(tempfile.mkdtemp(prefix="llmaas-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(made)
        target = "gateway.server:app_from_env"
    config = uvicorn_config(
        target,
        settings,
        port=settings.port,
        loop="uvloop",
        factory=settings.workers > 1,
        workers=settings.workers,
        # DrainingServer sets this to what is left of the grace when it exits; a float, which
        # uvicorn's asyncio.wait_for takes (its annotation says int). A worker replaced after a
        # crash or at SIGHUP is a DrainingServer too (DrainingWorkers).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_worker_healthcheck=WORKER_ANSWER_S,
    )
    if settings.workers > 1:
        # Each worker drains the same way; the grace reaches them through the environment
        # (the same variable the settings read, so a worker's own settings agree).
        os.environ[GRACE_ENV] = repr(settings.shutdown_grace_s)
        # JSON lines from here on: a port already taken is said as the one worker says it
        # (the supervisor set its logging up only once the socket was bound)
        configure_logging_single_threaded(settings.log_level)
        try:
            sockets = [config.bind_socket()]  # (exits if the port is taken)
        except BaseException:
            for directory in (made, None if pinned is None else pinned.dir):
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
            raise
        grace_s, flush_s = settings.shutdown_grace_s, settings.metering.flush_timeout_s
        DrainingWorkers(
            config, sockets, settings.log_level, made, pinned, grace_s=grace_s, flush_s=flush_s
        ).run()
    else:
        DrainingServer(config, settings.shutdown_grace_s).run()
