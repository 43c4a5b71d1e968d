"""Run the simulator on uvicorn: `serve` inside a running loop, `run` / `main` as a process.

python -m gateway.sim.server --model NAME --port P [--ttft-ms X --itl-ms Y --max-tokens N]
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp

from gateway.cli_options import port_number
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


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, shared by `python -m gateway.sim.server` and `llmaas sim`."""
    parser.add_argument(
        "--model", action="append", help="served model name (repeatable; default sim-model)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument(
        "--port",
        type=port_number,
        default=8001,
        help="port (default %(default)s; 0: any free port, printed once it listens)",
    )
    parser.add_argument(
        "--ttft-ms", type=float, default=0.0, help="time to first token (default %(default)s)"
    )
    parser.add_argument(
        "--itl-ms", type=float, default=0.0, help="inter-token latency (default %(default)s)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=16,
        help="completion length without max_tokens (default %(default)s)",
    )
    parser.add_argument(
        "--embedding-dim", type=int, default=8, help="embedding vector length (default %(default)s)"
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=2048,
        help="context: prompt + completion tokens (default %(default)s)",
    )
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=65536,
        help="capacity behind kv_cache_usage_perc (default %(default)s)",
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="fraction of requests to fail (default %(default)s)",
    )
    parser.add_argument(
        "--fail-status",
        type=int,
        default=500,
        help="status of those failures (default %(default)s)",
    )


def from_args(args: argparse.Namespace) -> tuple[SimConfig, str, int]:
    """What the parsed options describe: config, host, port. ValueError names a bad value by
    its option (`--max-tokens`, not SimConfig's `max_tokens`)."""
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
        raise ValueError(_FIELD.sub(_option, str(exc))) from None
    return config, args.host, args.port


_FIELD = re.compile(
    r"\b(models|ttft_ms|itl_ms|max_tokens|embedding_dim|max_model_len|kv_cache_tokens|"
    r"fail_rate|fail_status)\b"
)


def _option(field: re.Match[str]) -> str:
    name = field.group(1)
    return "--model" if name == "models" else "--" + name.replace("_", "-")


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
