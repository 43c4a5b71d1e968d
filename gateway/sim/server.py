"""Run the simulator on uvicorn: `serve` inside a running loop, `run` / `main` as a process.

python -m gateway.sim.server --model NAME --port P [--ttft-ms X --itl-ms Y --max-tokens N]
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp

from gateway.sim.app import create_sim_app
from gateway.sim.asgi import DROPPED
from gateway.sim.config import SimConfig
from gateway.sim.options import add_sim_arguments, from_args

GRACEFUL_SHUTDOWN_S = 2  # then requests still running (e.g. sim.hang) are cancelled


def uvicorn_config(app: ASGIApp, host: str, port: int, *, loop: str = "uvloop") -> uvicorn.Config:
    """How the simulator runs on uvicorn (httptools; `loop="none"` inside a running loop)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    logging.getLogger("uvicorn.error").addFilter(_quiet_deliberate_drops)  # idempotent
    return config


def _quiet_deliberate_drops(record: logging.LogRecord) -> bool:
    """Hide uvicorn's complaint about the return value that drops a connection on purpose."""
    return not (isinstance(record.args, tuple) and DROPPED in record.args)


class _SimServer(uvicorn.Server):
    """uvicorn's Server, saying where it listens once it does: `--port 0` (any free port) was
    never told (uvicorn's own line is below the simulator's log level), as `llmaas serve` says
    it in its log."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:  # (none if it could not bind: uvicorn said why)
            for bound in server.sockets:
                host, port = bound.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"listening on http://{shown}:{port}", flush=True)


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until shutdown (SIGINT/SIGTERM) in the running event loop."""
    server = _SimServer(uvicorn_config(create_sim_app(config), host, port))
    await server.serve()


def run(config: SimConfig, host: str, port: int) -> None:
    """Serve in a fresh uvloop event loop until SIGINT/SIGTERM (a blocking entry point)."""
    _SimServer(uvicorn_config(create_sim_app(config), host, port)).run()


def server_args(config: SimConfig, host: str, port: int) -> list[str]:
    """Command-line arguments of `python -m gateway.sim.server` that reproduce `config`."""
    args = [f"--model={name}" for name in config.models]
    args += [f"--host={host}", f"--port={port}", f"--ttft-ms={config.ttft_ms}"]
    args += [f"--itl-ms={config.itl_ms}", f"--max-tokens={config.max_tokens}"]
    args += [f"--embedding-dim={config.embedding_dim}", f"--max-model-len={config.max_model_len}"]
    args += [f"--kv-cache-tokens={config.kv_cache_tokens}", f"--fail-rate={config.fail_rate}"]
    return [*args, f"--fail-status={config.fail_status}"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.sim.server", description=__doc__)
    add_sim_arguments(parser)
    try:
        served = from_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    run(*served)


if __name__ == "__main__":
    main()
