"""The options every client command shares: where the gateway is, and the credential it sends."""

from __future__ import annotations

import argparse
import os

DEFAULT_URL = "http://127.0.0.1:8080"


def add_gateway_options(
    parser: argparse.ArgumentParser, *, token_flag: str, token_env: str, token_help: str
) -> None:
    """`--url` and the credential's flag, each defaulting to its environment variable."""
    parser.add_argument(
        "--url",
        default=os.environ.get("LLMAAS_URL", DEFAULT_URL),
        help=f"the gateway (default: $LLMAAS_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        token_flag, default=os.environ.get(token_env), help=f"{token_help} (default: ${token_env})"
    )
