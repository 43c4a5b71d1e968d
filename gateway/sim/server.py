"""Run the simulator on uvicorn: `serve` inside a running loop, `run` / `main` as a process.

python -m gateway.sim.server --model NAME --port P [--ttft-ms X --itl-ms Y --max-tokens N]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp

from gateway.sim.app import create_sim_app
from gateway.sim.asgi import DROPPED
from gateway.sim.config import SimConfig

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


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until shutdown (SIGINT/SIGTERM) in the running event loop."""
    server = uvicorn.Server(uvicorn_config(create_sim_app(config), host, port))
    await server.serve()


def run(config: SimConfig, host: str, port: int) -> None:
    """Serve in a fresh uvloop event loop until SIGINT/SIGTERM (a blocking entry point)."""
    uvicorn.Server(uvicorn_config(create_sim_app(config), host, port)).run()


def server_args(config: SimConfig, host: str, port: int) -> list[str]:
    """Command-line arguments of `python -m gateway.sim.server` that reproduce `config`."""
    args = [f"--model={name}" for name in config.models]
    args += [f"--host={host}", f"--port={port}", f"--ttft-ms={config.ttft_ms}"]
    args += [f"--itl-ms={config.itl_ms}", f"--max-tokens={config.max_tokens}"]
    args += [f"--embedding-dim={config.embedding_dim}", f"--max-model-len={config.max_model_len}"]
    args += [f"--kv-cache-tokens={config.kv_cache_tokens}", f"--fail-rate={config.fail_rate}"]
    return [*args, f"--fail-status={config.fail_status}"]


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "python -m gateway.sim.server"
) -> tuple[SimConfig, str, int]:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--model", action="append", help="served model name (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="inter-token latency")
    parser.add_argument("--max-tokens", type=int, default=16, help="default completion length")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-tokens", type=int, default=65536)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests to fail")
    parser.add_argument("--fail-status", type=int, default=500, help="status of those failures")
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            models=args.model or ["sim-model"],
            ttft_ms=args.ttft_ms,
            itl_ms=args.itl_ms,
            max_tokens=args.max_tokens,
            embedding_dim=args.embedding_dim,
            max_model_len=args.max_model_len,
            kv_cache_tokens=args.kv_cache_tokens,
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


def main(argv: Sequence[str] | None = None, prog: str = "python -m gateway.sim.server") -> None:
    run(*parse_args(argv, prog))


if __name__ == "__main__":
    main()
