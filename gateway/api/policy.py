"""Tenant policy applied to a request body before it is forwarded.

The body goes to the engine byte for byte unless policy must change it; only then is it
re-serialised. Today: vLLM's request `priority` is the tenant's (admin API), never the
client's: a client that could set it would jump every other tenant's queue.
"""

from __future__ import annotations

from typing import Any

import orjson


def with_priority(
    raw: bytes, body: dict[str, Any], priority: int | None
) -> tuple[bytes, dict[str, Any]]:
    """The body carrying the tenant's `priority` (None: none at all, the engines' default)."""
    if priority is None:
        if "priority" not in body:
            return raw, body
        changed = {k: v for k, v in body.items() if k != "priority"}
    else:
        current = body.get("priority")
        if type(current) is int and current == priority:
            return raw, body
        changed = {**body, "priority": priority}
    return orjson.dumps(changed), changed
