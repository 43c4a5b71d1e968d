"""Media ids a client gives its content parts (`uuid`), kept within its tenant.

vLLM 0.32 takes a content part's `uuid` as the media item's hash: the key of its processor
and encoder caches, shared by every request on the engine, and a hit there reuses the cached
item instead of the media sent. Passed on as sent, a tenant naming another tenant's id would
be answered about that tenant's image, or would plant its own image under an id the other uses.
Each id is therefore replaced by a keyed hash of the tenant and the id: the same id within a
tenant still hits the cache, the same id from two tenants never meets.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from gateway.api.media import PART_LISTS

Rename = Callable[[str], str]


def scoped_id(key: bytes, kind: str, tenant: str, client_id: str) -> str:
    """A client's id of `kind` kept within its tenant: a keyed hash (64 hex characters) that is
    the same for the same id within the tenant, and never meets another tenant's."""
    message = f"{kind}:{len(tenant)}:{tenant}:{client_id}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def media_id(key: bytes, tenant: str, client_id: str) -> str:
    """The id the engine sees for a client's `uuid`."""
    return scoped_id(key, "media_uuid", tenant, client_id)


def tenant_media_ids(items: object, rename: Rename) -> list[Any] | None:
    """Chat `messages` or Responses `input` with every content part's string `uuid` renamed
    (parts are copied, the caller's are untouched); None when there is none."""
    if not isinstance(items, list):
        return None
    out: list[Any] | None = None
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        renamed = _part(item, rename)  # a Responses input item can be a part itself
        for name in PART_LISTS:  # a message's content, a Responses tool output
            held = renamed.get(name)
            if isinstance(held, list):
                parts = [_part(p, rename) if isinstance(p, dict) else p for p in held]
                if any(new is not old for new, old in zip(parts, held, strict=True)):
                    renamed = {**renamed, name: parts}
        if renamed is not item:
            out = list(items) if out is None else out
            out[i] = renamed
    return out


def _part(part: dict[str, Any], rename: Rename) -> dict[str, Any]:
    client_id = part.get("uuid")
    if not isinstance(client_id, str):  # absent, or a type vLLM refuses itself
        return part
    return {**part, "uuid": rename(client_id)}
