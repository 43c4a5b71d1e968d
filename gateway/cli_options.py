"""The options every client command shares: where the gateway is, and the credential it sends."""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"


def add_gateway_options(
    parser: argparse.ArgumentParser, *, token_flag: str, token_env: str, token_help: str
) -> None:
    """`--url` and the credential's flag, each defaulting to its environment variable."""
    parser.add_argument(
        "--url",
        type=gateway_url,
        default=_FromEnvironment(os.environ["LLMAAS_URL"])
        if "LLMAAS_URL" in os.environ
        else DEFAULT_URL,
        help=f"the gateway, with or without /v1 (default: $LLMAAS_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        token_flag, default=os.environ.get(token_env), help=f"{token_help} (default: ${token_env})"
    )


def given(value: str) -> str:
    """A name that names something: an empty one (an unset shell variable) was taken as none
    given (a listing of every tenant) or as an unknown path."""
    if not value.strip():
        raise argparse.ArgumentTypeError("cannot be empty")
    return value


def port_number(value: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    return int_within(value, 0, 65535)


def fixed_port(value: str) -> int:
    """A TCP port, 1 to 65535: one a client is told (`llmaas up` prints its address)."""
    return int_within(value, 1, 65535)


def at_least_one(value: str) -> int:
    return int_within(value, 1, None)


def int_within(value: str, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < low or (high is not None and number > high):
        within = f"{low} to {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"must be {within}, got {number}")
    return number


class _FromEnvironment(str):
    """`--url`'s default as LLMAAS_URL gave it: its error names the variable (argparse names
    `--url`, which was not given)."""

    __slots__ = ()


def gateway_url(value: str) -> str:
    """The gateway's address as the clients add paths to it: the base URL that `llmaas up`
    prints (ending in /v1, what OpenAI clients take) is accepted too."""
    try:
        return _gateway_url(value)
    except argparse.ArgumentTypeError as exc:
        if isinstance(value, _FromEnvironment):
            raise argparse.ArgumentTypeError(f"LLMAAS_URL (no --url given): {exc}") from None
        raise


def _gateway_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if "@" in parts.netloc:  # the value is not repeated: it holds a password
        raise argparse.ArgumentTypeError(
            "the gateway's address carries no user or password: the credential goes in "
            "--admin-token or --api-key (or their environment variables)"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"not an http:// or https:// address of the gateway: {value!r}"
        )
    base = value.strip().rstrip("/")
    return base.removesuffix("/v1")
