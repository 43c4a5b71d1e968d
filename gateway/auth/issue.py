"""Issuing a key: the one place a secret is made, hashed, stored and shown (once)."""

from __future__ import annotations

from typing import Any

from gateway.auth.api_keys import format_key, hash_secret, new_key_id, new_secret
from gateway.auth.records import KeyRecord
from gateway.auth.revoke import revoke
from gateway.auth.store import AuthStore
from gateway.errors import InvalidRequest


async def issue_key(store: AuthStore, pepper: bytes, **fields: Any) -> tuple[KeyRecord, str, bool]:
    """Create a key for `fields["tenant"]`; return it, its plaintext and whether the tenant
    was created by it (it had no record: a typo in its name is a new tenant)."""
    secret = new_secret()
    record = KeyRecord(id=new_key_id(), secret_hash=hash_secret(pepper, secret), **fields)
    created = await store.create_key(record)
    if not await store.key_listed(record):
        # The tenant was deleted after the key was indexed, perhaps before its record was
        # written, which the deletion's revocations then did not find (revoke.py).
        await revoke(store, record)
        raise InvalidRequest(
            f"The tenant '{record.tenant}' was deleted while this key was being created; the "
            "key was revoked. Create it again to make a new tenant of that id.",
            param="tenant",
            code="tenant_deleted",
            status=409,
        )
    return record, format_key(record.id, secret), created
