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
    many keys this revoked. Its keys are revoked while its indexes still list them, so a
    deletion cut short (Redis away) leaves the tenant to delete again, never keys that work and
    that no listing finds; then its record and indexes go, and every key they listed is
    looked at again (one indexed or written meanwhile is revoked too), or revoked by its own
    creation if its record was not written yet (issue.py). A key
    indexed after that belongs to a new tenant of the same id."""
    stored, listed = await store.tenant_and_keys(tenant)
    if stored is None:
        return None
    revoked, settled = await _revoke_each(store, listed)
    deleted = await store.delete_tenant(tenant, stored)
    if deleted is None:  # deleted by another request meanwhile
        return None
    record, indexed = deleted
    # Every id not settled yet, not only those indexed since the first pass: one listed then
    # without a record yet (skipped) may have been written meanwhile, and its creation found
    # itself still listed (issue.py checks only after its write)
    more, _ = await _revoke_each(store, (indexed | listed) - settled)
    return record, revoked + more


async def _revoke_each(store: AuthStore, key_ids: set[str]) -> tuple[int, set[str]]:
    """Revoke each key not revoked yet: how many this did, and the ids now revoked (by this or
    before; not those without a record yet)."""
    revoked, settled = 0, set()
    for key_id in sorted(key_ids):
        key = await store.get_key(key_id)
        if key is None:  # not written yet (issue.py revokes it if its tenant is gone)
            continue
        settled.add(key_id)
        if key.revoked:  # done before
            continue
        try:
            await revoke(store, key)
        except ApiError as exc:
            if exc.code != "key_revoked":  # revoked meanwhile, by another request
                raise
            continue
        revoked += 1
    return revoked, settled
