"""Per-replica cache of key and tenant records, so a repeated key costs no Redis round trip.

Entries are dropped by pub/sub invalidation (see invalidation.py) as soon as an admin writes,
and in any case after `ttl_s`, which bounds staleness should the subscription break.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

from gateway.auth.records import KeyRecord, TenantRecord

T = TypeVar("T")
MISSING_TTL_S = 1.0  # unknown ids are remembered briefly so junk keys cannot hammer Redis


class _Timed(Generic[T]):
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.entries: dict[str, tuple[T | None, float]] = {}

    def get(self, name: str) -> tuple[bool, T | None]:
        """(found, value); a cached "absent" is (True, None)."""
        entry = self.entries.get(name)
        if entry is None:
            return False, None
        value, expires = entry
        if time.monotonic() >= expires:
            del self.entries[name]
            return False, None
        return True, value

    def put(self, name: str, value: T | None) -> None:
        ttl = self.ttl_s if value is not None else min(self.ttl_s, MISSING_TTL_S)
        self.entries[name] = (value, time.monotonic() + ttl)

    def drop(self, name: str) -> None:
        self.entries.pop(name, None)


class AuthCache:
    def __init__(self, ttl_s: float) -> None:
        self.keys: _Timed[KeyRecord] = _Timed(ttl_s)
        self.tenants: _Timed[TenantRecord] = _Timed(ttl_s)

    def invalidate(self, message: str) -> None:
        """Apply one pub/sub message: `key:<id>` or `tenant:<id>`."""
        kind, _, name = message.partition(":")
        if kind == "key":
            self.keys.drop(name)
        elif kind == "tenant":
            self.tenants.drop(name)
        else:
            self.clear()

    def clear(self) -> None:
        self.keys.entries.clear()
        self.tenants.entries.clear()
