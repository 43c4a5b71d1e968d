"""Waiting until a gateway's key cache holds a key, for tests that then take Redis away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.auth.authenticate import Authenticator


async def request_until_cached(
    auth: Authenticator, key_id: str, tenant: str, request: Callable[[], Awaitable[object]]
) -> None:
    """`request` (which uses the key) until the key and its tenant are in the gateway's cache:
    the key's creation publishes an invalidation, and heard late on a busy machine it leaves a
    read it overtook uncached, so a test that then stops Redis would meet the key check."""
    keys, tenants = auth.cache.keys, auth.cache.tenants
    for _ in range(5):
        await request()
        if keys.get(key_id)[0] and tenants.get(tenant)[0]:
            return
    raise AssertionError("the key never stayed in the gateway's cache")
