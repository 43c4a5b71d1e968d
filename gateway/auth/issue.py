"""Issuing a key: the one place a secret is made, hashed, stored and shown (once)."""

from __future__ import annotations

from typing import Any

from gateway.auth.api_keys import format_key, hash_secret, new_key_id, new_secret
from gateway.auth.records import KeyRecord
from gateway.auth.store import AuthStore


async def issue_key(store: AuthStore, pepper: bytes, **fields: Any) -> tuple[KeyRecord, str]:
    """Create a key for `fields["tenant"]` (created if new); return it and its plaintext."""
    await store.ensure_tenant(fields["tenant"])
    secret = new_secret()
    record = KeyRecord(id=new_key_id(), secret_hash=hash_secret(pepper, secret), **fields)
    await store.create_key(record)
    return record, format_key(record.id, secret)
