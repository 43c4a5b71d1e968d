"""`llmaas up`'s development API key and admin token, the same from one run to the next.

Each run used to issue a new key (the earlier ones kept working, and piled up in the tenant
`dev`: one per `make run`) and to make up a new admin token, so an app's `.env` and an
exported LLMAAS_ADMIN_TOKEN went stale at every restart. Both are now kept in the data
directory (credentials.json, readable by its owner only) and shown again; the key is issued
anew only when the kept one no longer works (revoked, expired, deleted, another pepper, or a
Redis without it: a shared one, LLMAAS_REDIS_URL). LLMAAS_ADMIN_TOKEN, when set, still wins
over the kept token, and is never written there.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.auth.api_keys import parse_key, secret_matches
from gateway.auth.issue import issue_key
from gateway.auth.store import AuthStore
from gateway.redis_client import redis_client

TENANT = "dev"
KEY_NAME = "llmaas up"


@dataclass(frozen=True, slots=True)
class DevCredentials:
    api_key: str
    admin_token: str


def kept(path: Path) -> DevCredentials | None:
    """What an earlier run kept at `path`; None when there is nothing (or nothing readable)."""
    try:
        data = json.loads(path.read_text())
        return DevCredentials(str(data["api_key"]), str(data["admin_token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep(path: Path, credentials: DevCredentials) -> None:
    """Write `credentials` to `path`, readable by its owner only, whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(credentials), out)
    partial.replace(path)


def admin_token(earlier: DevCredentials | None) -> str:
    """The kept admin token, else a new one."""
    return earlier.admin_token if earlier else secrets.token_urlsafe(24)


async def dev_key(
    redis_url: str, pepper: bytes, earlier: DevCredentials | None, password: str | None = None
) -> str:
    """The kept key if it still works, else a new one of the tenant `dev`. `password`: used
    instead of the URL's (LLMAAS_REDIS_PASSWORD, with a shared Redis), as the gateway does."""
    redis = redis_client(redis_url, 5.0, 4, password)
    try:
        store = AuthStore(redis)
        if earlier is not None and await _works(store, pepper, earlier.api_key):
            return earlier.api_key
        _, key, _ = await issue_key(store, pepper, tenant=TENANT, name=KEY_NAME)
    finally:
        await redis.aclose()
    return key


async def _works(store: AuthStore, pepper: bytes, key: str) -> bool:
    parsed = parse_key(key)
    if parsed is None:
        return False
    key_id, secret = parsed
    record = await store.get_key(key_id)
    return (
        record is not None
        and record.usable(time.time())
        and secret_matches(pepper, secret, record.secret_hash)
    )
