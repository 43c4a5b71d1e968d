"""A usage query's `group_by` as the gateway reads it: the usage API and `llmaas usage` both
parse it here (no Redis client in reach: the command checks its option before it sends)."""

from __future__ import annotations

GROUPS = ("tenant", "key_id", "model", "day")
DEFAULT_GROUP_BY = ("tenant", "key_id", "model")


def parse_group_by(value: str) -> tuple[str, ...]:
    """A comma-separated group_by (the API's parameter, `llmaas usage --group-by`); ValueError
    saying what is wrong: an unknown dimension, one twice, none."""
    groups = tuple(g.strip() for g in value.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or len(set(groups)) != len(groups) or not groups:
        raise ValueError(f"{value!r}; use a comma-separated list of {', '.join(GROUPS)}")
    return groups
