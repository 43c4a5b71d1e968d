"""The auth cache: bounded per kind (least recently used go first); invalidations counted."""

from __future__ import annotations

from gateway.auth.cache import AuthCache
from gateway.auth.records import KeyRecord


def _record(key_id: str) -> KeyRecord:
    return KeyRecord(id=key_id, tenant="t", secret_hash="0" * 64)


def test_unknown_ids_fill_the_cache_only_up_to_its_bound() -> None:
    cache = AuthCache(ttl_s=30.0, max_entries=50)
    cache.keys.put("kept", _record("kept"))
    for n in range(10_000):
        cache.keys.put(f"junk-{n}", None)
        assert cache.keys.get("kept")[0]  # used, so never the least recently used
    assert len(cache.keys) == 50
    assert cache.keys.get("junk-0") == (False, None)
    assert cache.keys.get("junk-9999") == (True, None)


def test_every_invalidation_moves_the_generation_on() -> None:
    cache = AuthCache(ttl_s=30.0)
    seen = {cache.generation}
    for message in ("key:a", "tenant:b", "key:not-cached", "garbage"):
        cache.invalidate(message)
        seen.add(cache.generation)
    cache.clear()
    seen.add(cache.generation)
    assert len(seen) == 6
