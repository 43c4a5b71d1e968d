"""Tenants and keys in Redis, the only state store.

Layout: `llmaas:apikey:<id>` holds a key's JSON (looked up by id alone, so it carries no tenant
hash tag); `llmaas:{t:<tenant>}:tenant` the tenant's JSON and `llmaas:{t:<tenant>}:keys` the set
of its key ids; `llmaas:tenants` the set of tenant ids. Writers publish on `CHANNEL` so every
replica drops what it cached.
"""

from __future__ import annotations

from redis.asyncio import Redis

from gateway.auth.records import KeyRecord, TenantRecord

CHANNEL = "llmaas:auth:invalidate"
TENANTS = "llmaas:tenants"


def key_key(key_id: str) -> str:
    return f"llmaas:apikey:{key_id}"


def tenant_key(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:tenant"


def tenant_keys_key(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:keys"


class AuthStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def get_key(self, key_id: str) -> KeyRecord | None:
        raw = await self.redis.get(key_key(key_id))
        return None if raw is None else KeyRecord.model_validate_json(raw)

    async def get_tenant(self, tenant: str) -> TenantRecord | None:
        raw = await self.redis.get(tenant_key(tenant))
        return None if raw is None else TenantRecord.model_validate_json(raw)

    async def put_key(self, record: KeyRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key_key(record.id), record.model_dump_json())
            pipe.sadd(tenant_keys_key(record.tenant), record.id)
            pipe.publish(CHANNEL, f"key:{record.id}")
            await pipe.execute()

    async def put_tenant(self, record: TenantRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(tenant_key(record.id), record.model_dump_json())
            pipe.sadd(TENANTS, record.id)
            pipe.publish(CHANNEL, f"tenant:{record.id}")
            await pipe.execute()

    async def ensure_tenant(self, tenant: str) -> TenantRecord:
        existing = await self.get_tenant(tenant)
        if existing is not None:
            return existing
        record = TenantRecord(id=tenant)
        created = await self.redis.set(tenant_key(tenant), record.model_dump_json(), nx=True)
        if not created:  # another writer won the race; theirs stands
            return await self.get_tenant(tenant) or record
        await self.redis.sadd(TENANTS, tenant)
        return record

    async def list_tenants(self) -> list[TenantRecord]:
        ids = sorted(_text(m) for m in await self.redis.smembers(TENANTS))
        raws = await self.redis.mget([tenant_key(t) for t in ids]) if ids else []
        return [TenantRecord.model_validate_json(r) for r in raws if r is not None]

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        tenants = [tenant] if tenant else [t.id for t in await self.list_tenants()]
        ids: list[str] = []
        for t in tenants:
            ids += sorted(_text(m) for m in await self.redis.smembers(tenant_keys_key(t)))
        raws = await self.redis.mget([key_key(i) for i in ids]) if ids else []
        records = [KeyRecord.model_validate_json(r) for r in raws if r is not None]
        return sorted(records, key=lambda r: (r.tenant, r.created_at))


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
