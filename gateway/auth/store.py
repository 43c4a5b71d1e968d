"""Tenants and keys in Redis, the only state store.

Layout: `llmaas:apikey:<id>` holds a key's JSON (looked up by id alone, so it carries no tenant
hash tag); `llmaas:{t:<tenant>}:tenant` the tenant's JSON, `llmaas:{t:<tenant>}:keys` the set
of its key ids and `llmaas:{t:<tenant>}:keys_by_time` the same ids scored by creation time, which
lists read a page of (keys made before that index existed are added to it by the first listing
of their tenant); `llmaas:tenants` the set of tenant ids. Writers publish on `CHANNEL` so every
replica drops what it cached.

Redis Cluster: every command and transaction touches one hash slot. A key record is written by
one script on its own key (compare-and-set, see `WRITE_KEY`); the indexes are added to first,
by one script on the tenant's slot that also creates the tenant if it has no record, so a record
is never live without being listed. A tenant's deletion takes its record and both indexes in one
script on that slot (`DELETE_TENANT`), then its id from `llmaas:tenants`; a tenant's writer
adds the id before its record and again after, so a tenant written again is never left unlisted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from redis.asyncio import Redis

from gateway.auth.records import KeyRecord, TenantRecord
from gateway.auth.store_scripts import CHANGE_TENANT, DELETE_TENANT, INDEX_KEY, WRITE_KEY
from gateway.errors import InvalidRequest, NotFound
from gateway.redis_client import REDIS_FAILURES, landed
from gateway.redis_pages import AfterNotFound, IndexPages

CHANNEL = "llmaas:auth:invalidate"
TENANTS = "llmaas:tenants"


def key_key(key_id: str) -> str:
    return f"llmaas:apikey:{key_id}"


def tenant_key(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:tenant"


def tenant_keys_key(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:keys"


def tenant_keys_by_time_key(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}:keys_by_time"


class AuthStore:
    def __init__(self, redis: Redis, on_write: Callable[[str], None] | None = None) -> None:
        self.redis = redis
        self.on_write = on_write  # this replica's cache: dropped at once, not when pub/sub says
        self._write_key = redis.register_script(WRITE_KEY)
        self._change_tenant = redis.register_script(CHANGE_TENANT)
        self._index_key = redis.register_script(INDEX_KEY)
        self._delete_tenant = redis.register_script(DELETE_TENANT)
        self._pages = IndexPages(redis)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        found = await self.get_key_version(key_id)
        return None if found is None else found[0]

    async def get_key_version(self, key_id: str) -> tuple[KeyRecord, bytes] | None:
        """The record and its stored JSON, to write it back only if nobody changed it since."""
        stored = await self._stored(key_key(key_id))
        return None if stored is None else (KeyRecord.model_validate_json(stored), stored)

    async def get_tenant(self, tenant: str) -> TenantRecord | None:
        found = await self.get_tenant_version(tenant)
        return None if found is None else found[0]

    async def get_tenant_version(self, tenant: str) -> tuple[TenantRecord, bytes] | None:
        """The record and its stored JSON, to change it only if nobody changed it since."""
        stored = await self._stored(tenant_key(tenant))
        return None if stored is None else (TenantRecord.model_validate_json(stored), stored)

    async def _landed(self, exc: BaseException, name: str, written: bytes) -> bool:
        """Whether a write of `written` to `name` that raised `exc` ran all the same
        (redis_client.landed: a 503 "try again" would be a lie)."""

        async def holds() -> bool:
            return await self._stored(name) == written

        return await landed(exc, holds)

    async def _stored(self, name: str) -> bytes | None:
        """A record's JSON as stored: the bytes a compare-and-set script compares."""
        raw = await self.redis.get(name)
        return raw if raw is None or isinstance(raw, bytes) else raw.encode()

    async def create_key(self, record: KeyRecord) -> bool:
        """Store a new key, and its tenant with no settings of its own if it has no record;
        whether the tenant was created so (a typo in a tenant's name made a new tenant unseen)."""
        tenant = record.tenant
        fresh = TenantRecord(id=tenant).model_dump_json()
        await self.redis.sadd(TENANTS, tenant)
        try:
            created = await self._index_key(
                keys=[tenant_key(tenant), tenant_keys_key(tenant), tenant_keys_by_time_key(tenant)],
                args=[fresh, record.id, record.created_at],
            )
        except REDIS_FAILURES as exc:
            if not await landed(exc, lambda: self.key_listed(record)):
                raise
            created = await self._stored(tenant_key(tenant)) == fresh.encode()  # (its time)
        if created:
            await self.redis.sadd(TENANTS, tenant)  # (again: see the module's docstring)
        await self._put_key(record, "create")
        return bool(created)

    async def key_listed(self, record: KeyRecord) -> bool:
        """Whether the key is still in its tenant's index: false once the tenant was deleted
        after the key was indexed (the deletion may have found no record to revoke yet)."""
        return bool(await self.redis.sismember(tenant_keys_key(record.tenant), record.id))

    async def put_key(self, record: KeyRecord, *, read: bytes | None = None) -> None:
        """Replace an existing key's record; refused (409) once the key is revoked, and (with
        `read`, the stored JSON the record was made from) if another write came in between."""
        await self._put_key(record, "update", read or b"")

    async def _put_key(self, record: KeyRecord, mode: str, read: bytes = b"") -> None:
        message = f"key:{record.id}"
        written = record.model_dump_json()
        args: list[str | bytes] = [written, CHANNEL, message, mode, read]
        try:
            outcome = _text(await self._write_key(keys=[key_key(record.id)], args=args))
        except REDIS_FAILURES as exc:
            if not await self._landed(exc, key_key(record.id), written.encode()):
                raise
            outcome = "ok"  # written (a rotation's new secret is the one that works now)
        self._written(message)
        if outcome == "missing":
            raise NotFound(f"No API key with id '{record.id}'.", param="id", code="key_not_found")
        if outcome == "revoked":
            raise key_revoked(record.id)
        if outcome == "changed":
            raise _changed_meanwhile(f"The API key '{record.id}'", "key_changed")
        if outcome == "exists":
            raise InvalidRequest(
                f"An API key with id '{record.id}' already exists.", code="key_exists", status=409
            )

    async def put_tenant(self, record: TenantRecord) -> None:
        await self.redis.sadd(TENANTS, record.id)
        message = f"tenant:{record.id}"
        written = record.model_dump_json()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:  # one slot: its tag
                pipe.set(tenant_key(record.id), written)
                pipe.publish(CHANNEL, message)
                await pipe.execute()
        except REDIS_FAILURES as exc:
            if not await self._landed(exc, tenant_key(record.id), written.encode()):
                raise
        await self.redis.sadd(TENANTS, record.id)  # (again: see the module's docstring)
        self._written(message)

    async def change_tenant(self, record: TenantRecord, read: bytes) -> None:
        """Write an existing tenant's changed record, if it still holds `read` (409 if another
        write came in between, 404 if it is gone)."""
        message = f"tenant:{record.id}"
        written = record.model_dump_json()
        args: list[str | bytes] = [written, CHANNEL, message, read]
        try:
            outcome = _text(await self._change_tenant(keys=[tenant_key(record.id)], args=args))
        except REDIS_FAILURES as exc:
            if not await self._landed(exc, tenant_key(record.id), written.encode()):
                raise
            outcome = "ok"  # (the tenant holds what was written: this write or an equal one)
        self._written(message)
        if outcome == "missing":
            raise tenant_not_found(record.id)
        if outcome == "changed":
            raise _changed_meanwhile(f"The tenant '{record.id}'", "tenant_changed")

    async def tenant_and_keys(self, tenant: str) -> tuple[bytes | None, set[str]]:
        """The tenant's stored record (None: it has none) and the ids of the keys it lists."""
        async with self.redis.pipeline(transaction=True) as pipe:  # one slot: its tag
            pipe.get(tenant_key(tenant))
            pipe.smembers(tenant_keys_key(tenant))
            stored, listed = await pipe.execute()
        return stored, set(map(_text, listed))

    async def delete_tenant(
        self, tenant: str, stored: bytes
    ) -> tuple[TenantRecord, set[str]] | None:
        """Remove the tenant's record and key indexes (None: another request did first); its
        record and every key id listed at that moment. `stored`: its record as read before."""
        message = f"tenant:{tenant}"
        keys = [tenant_key(tenant), tenant_keys_key(tenant), tenant_keys_by_time_key(tenant)]
        try:
            removed = await self._delete_tenant(keys=keys, args=[CHANNEL, message])
        except REDIS_FAILURES as exc:
            if not await landed(exc, lambda: self._absent(tenant_key(tenant))):
                raise
            removed = [stored, []]  # (gone: its keys are those listed before)
        self._written(message)
        if removed is None:
            return None
        await self._unlist(tenant)
        record, ids = removed
        return TenantRecord.model_validate_json(record), set(map(_text, ids))

    async def _unlist(self, tenant: str) -> None:
        """Take a deleted tenant out of the set of ids, unless written again since: its writer
        lists it after its write, so one that wrote before this removal is listed again here."""
        await self.redis.srem(TENANTS, tenant)
        if await self.redis.exists(tenant_key(tenant)):
            await self.redis.sadd(TENANTS, tenant)

    async def _absent(self, name: str) -> bool:
        """Whether `name` holds nothing (for `landed`: whether a deletion of it ran)."""
        return await self._stored(name) is None

    async def page_tenants(
        self, limit: int, after: str | None = None
    ) -> tuple[list[TenantRecord], bool]:
        """Up to `limit` tenants by id after the tenant `after`, and whether more follow; only
        the page's records are read (the ids are one set: short strings).

        Raises AfterNotFound when `after` names no tenant."""
        ids = sorted(_text(m) for m in await self.redis.smembers(TENANTS))
        start = 0
        if after is not None:
            start = bisect.bisect_right(ids, after)
            if not start or ids[start - 1] != after:
                raise AfterNotFound(after)
        page = ids[start : start + limit]
        raws = await self._get_each([tenant_key(t) for t in page])
        records = [TenantRecord.model_validate_json(r) for r in raws if r is not None]
        return records, start + limit < len(ids)

    async def page_keys(
        self, tenant: str | None, limit: int, after: str | None = None
    ) -> tuple[list[KeyRecord], bool]:
        """Up to `limit` keys (of `tenant`, or of every tenant) after the key `after`, by tenant
        then creation time, and whether more follow; only the page's records are read, and the
        tenants it spans in a few round trips whatever their number.

        Raises AfterNotFound when `after` names no key of this listing."""
        cursor: KeyRecord | None = None
        if after is not None:
            cursor = await self.get_key(after)
            if cursor is None or tenant not in (None, cursor.tenant):
                raise AfterNotFound(after)
        if tenant is not None:
            tenants = [tenant]
        else:
            first = "" if cursor is None else cursor.tenant
            every = set(map(_text, await self.redis.smembers(TENANTS)))
            tenants = sorted(t for t in every | ({first} - {""}) if t >= first)
        need = limit + 1  # one more than the page: whether more follow
        ids: list[str] = []
        if cursor is not None:  # (its tenant is the first of `tenants`)
            await self._count_by_time(tenants[:1])  # (adds keys made before the index)
            ids, _ = await self._pages.page(
                tenant_keys_by_time_key(cursor.tenant),
                need,
                desc=False,
                after=after,
                after_score=cursor.created_at,
            )
            tenants = tenants[1:]
        taken: list[tuple[str, int]] = []  # the next tenants' first keys that fill the page
        wanted, counted = need - len(ids), 0
        while wanted > 0 and counted < len(tenants):  # counted a batch at a time, not all
            batch = tenants[counted : counted + max(wanted, 64)]
            counted += len(batch)
            for t, n in (await self._count_by_time(batch)).items():
                if n and wanted > 0:
                    taken.append((t, min(n, wanted)))
                    wanted -= min(n, wanted)
        if taken:
            async with self.redis.pipeline(transaction=False) as pipe:
                for t, n in taken:
                    pipe.zrange(tenant_keys_by_time_key(t), 0, n - 1)
                ids += [_text(i) for page in await pipe.execute() for i in page]
        raws = await self._get_each([key_key(i) for i in ids[:limit]])
        records = [KeyRecord.model_validate_json(r) for r in raws if r is not None]
        return records, len(ids) > limit

    async def _count_by_time(self, tenants: list[str]) -> dict[str, int]:
        """Each tenant's keys in its keys_by_time index, after adding those made before the
        index existed (or by a replica that does not write it yet): in one round trip when
        there are none of those."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in tenants:
                pipe.scard(tenant_keys_key(t))
                pipe.zcard(tenant_keys_by_time_key(t))
            counted: list[int] = await pipe.execute()
        counts = dict(zip(tenants, counted[1::2], strict=True))
        for t, in_set, in_index in zip(tenants, counted[::2], counted[1::2], strict=True):
            if in_set > in_index:
                counts[t] = await self._index_by_time(t)
        return counts

    async def _index_by_time(self, tenant: str) -> int:
        """Add the tenant's keys missing from its keys_by_time index; how many it then holds."""
        listed, by_time = tenant_keys_key(tenant), tenant_keys_by_time_key(tenant)
        indexed = set(await self.redis.zrange(by_time, 0, -1))
        missing = [_text(m) for m in await self.redis.smembers(listed) if m not in indexed]
        raws = await self._get_each([key_key(i) for i in missing])
        made = {
            i: KeyRecord.model_validate_json(r).created_at
            for i, r in zip(missing, raws, strict=True)
            if r is not None
        }
        if made:
            await self.redis.zadd(by_time, made, nx=True)
        return int(await self.redis.zcard(by_time))

    async def _get_each(self, names: list[str]) -> list[bytes | None]:
        """One GET per key in one round trip (not MGET: the keys live in many slots)."""
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(name)
            result: list[bytes | None] = await pipe.execute()
        return result

    def _written(self, message: str) -> None:
        if self.on_write is not None:
            self.on_write(message)


def _changed_meanwhile(what: str, code: str) -> InvalidRequest:
    """409: a write made from a record read before another write of it."""
    return InvalidRequest(
        f"{what} was changed by another request at the same time; nothing was written. Read "
        "it again and retry.",
        param="id",
        code=code,
        status=409,
    )


def tenant_not_found(tenant: str) -> NotFound:
    return NotFound(f"No tenant '{tenant}'.", param="id", code="tenant_not_found")


def key_revoked(key_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"The API key '{key_id}' has been revoked; a revoked key cannot be changed.",
        param="id",
        code="key_revoked",
        status=409,
    )


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
