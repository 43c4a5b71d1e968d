"""Per-replica cache of key and tenant records, so a repeated key costs no Redis round trip.

Entries are dropped by pub/sub invalidation (see invalidation.py) as soon as an admin writes,
and in any case after `ttl_s`, which bounds staleness should the subscription break. While
Redis cannot be read, an expired record (never an "absent") still answers for up to `stale_s`
past its ttl (auth.stale_max_s): every request was a 503 `auth_store_unavailable` once the
cache aged out, in `limits.failure_mode: open` too. That is also how long a key revoked through
another replica works on this one while only this one cannot reach Redis (a partition), hence a
bound of minutes, not hours. Each kind
holds at most `max_entries` (least recently used go first), so junk ids cannot grow it.

`generation` counts invalidations: a lookup notes it before reading Redis and caches its answer
only if no invalidation arrived meanwhile, so a revocation can never be overwritten by a read
that was already in flight.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

from gateway.auth.records import KeyRecord, TenantRecord

T = TypeVar("T")
MISSING_TTL_S = 1.0  # unknown ids are remembered briefly so junk keys cannot hammer Redis


class Timed(Generic[T]):
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[T | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> tuple[bool, T | None]:
        """(found, value); a cached "absent" is (True, None). An expired record stays (until
        it is read again, dropped or evicted) for `stale`."""
        entry = self.entries.get(name)
        if entry is None:
            return False, None
        value, expires = entry
        if time.monotonic() >= expires:
            if value is None:
                del self.entries[name]
            return False, None
        self.entries.move_to_end(name)
        return True, value

    def stale(self, name: str, max_age_s: float) -> T | None:
        """A record past its ttl by at most `max_age_s`, for when the store cannot be read:
        nothing has said it changed (an admin's write drops it at once, through the feed)."""
        entry = self.entries.get(name)
        if entry is None or entry[0] is None or time.monotonic() >= entry[1] + max_age_s:
            return None
        return entry[0]

    def put(self, name: str, value: T | None) -> None:
        ttl = self.ttl_s if value is not None else min(self.ttl_s, MISSING_TTL_S)
        self.entries[name] = (value, time.monotonic() + ttl)
        self.entries.move_to_end(name)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def drop(self, name: str) -> None:
        self.entries.pop(name, None)

    def expire(self) -> None:
        """Every record read again at its next use, each kept for `stale` from now."""
        now = time.monotonic()
        for name, (value, expires) in list(self.entries.items()):
            if value is None:
                del self.entries[name]
            elif expires > now:
                self.entries[name] = (value, now)


class AuthCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000, stale_s: float = 0.0) -> None:
        """`stale_s`: how long past its ttl a record answers while Redis cannot be read."""
        self.stale_s = stale_s
        self.keys: Timed[KeyRecord] = Timed(ttl_s, max_entries)
        self.tenants: Timed[TenantRecord] = Timed(ttl_s, max_entries)
        self.generation = 0

    def invalidate(self, message: str) -> None:
        """Apply one pub/sub message: `key:<id>` or `tenant:<id>`."""
        self.generation += 1
        kind, _, name = message.partition(":")
        if kind == "key":
            self.keys.drop(name)
        elif kind == "tenant":
            self.tenants.drop(name)
        else:
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self.keys.entries.clear()
        self.tenants.entries.clear()

    def expire(self) -> None:
        """What a (re)subscription does: whatever changed while nobody listened is unknown, so
        every record is read again at its next use, but kept as the stale answer while Redis
        cannot be read (emptied, a second outage soon after a first was a 503 for every key,
        with `stale_s` of cover documented)."""
        self.generation += 1
        self.keys.expire()
        self.tenants.expire()
