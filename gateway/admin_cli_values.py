"""The values of the admin CLI's options (`llmaas keys`, `llmaas tenants`), checked as argparse
types before anything is sent: a bad one is a usage error naming its option (exit 2), not the
gateway's 400 (exit 1)."""

from __future__ import annotations

import argparse

from gateway.auth.api_keys import PREFIX, parse_key
from gateway.auth.principal import MAX_LIMIT
from gateway.cli_options import given, int_within

KEY_ID_HELP = "the key's id, as keys list shows it (or the whole key: only its id is sent)"


def key_id(value: str) -> str:
    """A key's id; a whole key (sk-llmaas-<id>-<secret>) gives its id, so that its secret never
    goes into a URL (an access log, a proxy's log) or an error message."""
    if value.startswith(PREFIX):
        parsed = parse_key(value)
        if parsed is None:
            raise argparse.ArgumentTypeError(
                "is not a whole key (sk-llmaas-<id>-<secret>): give the key's id, as keys list "
                "shows it"
            )
        return parsed[0]
    return given(value)


def limit_or_none(value: str) -> int | None:
    """A limit to set, or `none` to lift it."""
    return None if _none(value) else limit(value)


def priority_or_none(value: str) -> int | None:
    """A priority to set, or `none` for the engines' default."""
    return None if _none(value) else priority(value)


def _none(value: str) -> bool:
    if value.strip().lower() == "none":
        return True
    try:
        int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a whole number nor none") from None
    return False


def priority(value: str) -> int:
    """vLLM's request priority, as the admin API takes it (a 32-bit integer)."""
    return int_within(value, -(2**31), 2**31 - 1)


def limit(value: str) -> int:
    """A limit, as the admin API takes it: 1 or more (0 would refuse every request; an
    account with no access is a disabled tenant or a revoked key)."""
    return int_within(value, 1, MAX_LIMIT)


def model_list(value: str) -> list[str]:
    """--models as the API takes it ("": none). An empty name between commas is refused here,
    as the API refuses it: it was dropped (`a,,b` allowed a and b)."""
    try:
        return names(value, "model")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def names(value: str, what: str) -> list[str]:
    """A comma-separated list ("": empty); ValueError for an empty item."""
    if not value.strip():
        return []
    names = [name.strip() for name in value.split(",")]
    if "" in names:
        raise ValueError(f"{value!r} has an empty {what} name (two commas, or one at an end)")
    return names
