"""Revoking keys: one at a time, as `DELETE /admin/v1/keys/{id}` does, or every key of a tenant
being deleted. Each revocation is its own key write, published on the invalidation channel, so
every replica drops the key from its cache at once (invalidation.py)."""

from __future__ import annotations

from gateway.auth.records import KeyRecord, TenantRecord
from gateway.auth.store import AuthStore
from gateway.errors import ApiError


async def revoke(store: AuthStore, record: KeyRecord) -> KeyRecord:
    """`record` revoked, as written (final: the store refuses to write it live again)."""
    revoked = record.model_copy(update={"revoked": True})
    await store.put_key(revoked)
    return revoked


async def delete_tenant(store: AuthStore, tenant: str) -> tuple[TenantRecord, int] | None:
    """Delete the tenant and revoke every key it had (None: no such tenant); its record and how
    many keys this revoked. The keys are revoked after the tenant's indexes are gone: a key
    indexed before that is revoked here, or by its own creation if its record was not written
    yet (issue.py); one indexed after belongs to a new tenant of the same id."""
    deleted = await store.delete_tenant(tenant)
    if deleted is None:
        return None
    record, key_ids = deleted
    revoked = 0
    for key_id in sorted(key_ids):
        key = await store.get_key(key_id)
        if key is None or key.revoked:  # not written yet (issue.py revokes it), or done before
            continue
        try:
            await revoke(store, key)
        except ApiError as exc:
            if exc.code != "key_revoked":  # revoked meanwhile, by another request
                raise
            continue
        revoked += 1
    return record, revoked
