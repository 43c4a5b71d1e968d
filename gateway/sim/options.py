"""The simulator's options, shared by `python -m gateway.sim.server` and `llmaas sim`, and the
SimConfig they describe: apart from the server (uvicorn), so that `llmaas --help` stays fast."""

from __future__ import annotations

import argparse
import re

from gateway.cli_options import port_number
from gateway.sim.config import SimConfig


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
