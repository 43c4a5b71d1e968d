"""Files' metadata in Redis, under the tenant's hash tag (one slot per tenant).

`llmaas:{t:<tenant>}:file:<id>` holds a file's JSON, `llmaas:{t:<tenant>}:files:bytes` the
bytes of them all (files.max_bytes_per_tenant); `llmaas:{t:<tenant>}:files` and
`llmaas:{t:<tenant>}:files:<purpose>` order its ids by creation, so a page of a listing, with or
without a purpose filter, reads only that page (no scan that grows with what is filtered out).
A file id is looked up only under the caller's tenant: another tenant's file is simply absent.
A deleted file's index score stays a day under `llmaas:{t:<tenant>}:file-gone:<id>`, so a listing
paged `after` it (deleting each file while auto-paginating) goes on where it stood.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from gateway.files.records import FileRecord
from gateway.redis_pages import AfterNotFound, IndexPages

Order = Literal["asc", "desc"]
GONE_TTL_S = 86_400  # how long a deleted file still serves as an `after` cursor


def _tag(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}"


def file_key(tenant: str, file_id: str) -> str:
    return f"{_tag(tenant)}:file:{file_id}"


def gone_key(tenant: str, file_id: str) -> str:
    return f"{_tag(tenant)}:file-gone:{file_id}"


def index_key(tenant: str, purpose: str | None = None) -> str:
    return f"{_tag(tenant)}:files" + ("" if purpose is None else f":{purpose}")


def bytes_key(tenant: str) -> str:
    """The bytes the tenant's files hold, in all (absent before 2026-12-06: counted once)."""
    return f"{_tag(tenant)}:files:bytes"


# 1: stored; 0: the tenant has max_files; -2: it would pass max_bytes; -1: its files were
# stored before their bytes were counted (count them, then try again).
_PUT_FILE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
local used = redis.call('GET', KEYS[4])
if not used then
  if redis.call('ZCARD', KEYS[2]) > 0 then return -1 end
  used = 0
end
if tonumber(used) + tonumber(ARGV[5]) > tonumber(ARGV[6]) then return -2 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
redis.call('INCRBY', KEYS[4], ARGV[5])
return 1
"""
Stored = Literal["stored", "too_many_files", "too_many_bytes"]

# A fine-tuned model's adapter counted in (or, deleted, out of) its tenant's bytes, once they
# are counted at all (else the tenant's next upload counts its files, and the adapters made
# before are not counted); never below 0.
_ADD_BYTES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n < 0 then redis.call('SET', KEYS[1], 0) return 0 end
return n
"""


class FileStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._put = redis.register_script(_PUT_FILE)
        self._add = redis.register_script(_ADD_BYTES)
        self._pages = IndexPages(redis)

    async def count(self, tenant: str) -> int:
        return int(await self.redis.zcard(index_key(tenant)))

    async def add_bytes(self, tenant: str, delta: int) -> None:
        """Count `delta` bytes more (a fine-tuned model's adapter) or fewer (one deleted) in
        the tenant's bytes, if they are counted yet."""
        if delta:
            await self._add(keys=[bytes_key(tenant)], args=[delta])

    async def bytes_used(self, tenant: str) -> int | None:
        """The bytes the tenant's files hold (None: not counted yet)."""
        used = await self.redis.get(bytes_key(tenant))
        return None if used is None else int(used)

    async def put(
        self, record: FileRecord, created_ms: int, max_files: int, max_bytes: int
    ) -> Stored:
        """Store and list the record, unless its tenant already has `max_files`, or its files
        and this one would hold more than `max_bytes`: the counts and the write are one step,
        so concurrent uploads cannot pass the limits."""
        t = record.tenant
        keys = [file_key(t, record.id), index_key(t), index_key(t, record.purpose), bytes_key(t)]
        args: list[str | int] = [record.model_dump_json(), created_ms, max_files, record.id]
        args += [record.bytes, max_bytes]
        answer = await self._put(keys=keys, args=args)
        if answer == -1:
            await self._count_bytes(t)
            answer = await self._put(keys=keys, args=args)
        return "stored" if answer == 1 else "too_many_files" if answer == 0 else "too_many_bytes"

    async def _count_bytes(self, tenant: str) -> None:
        """Count the bytes of files stored before they were counted (SET NX: another gateway
        may have counted them meanwhile; a file deleted in between is counted, a little too
        much, never too little)."""
        ids = cast("list[bytes]", await self.redis.zrange(index_key(tenant), 0, -1))
        total = 0
        for offset in range(0, len(ids), 1000):
            chunk = ids[offset : offset + 1000]
            raws = await self.redis.mget([file_key(tenant, i.decode()) for i in chunk])
            total += sum(FileRecord.model_validate_json(r).bytes for r in raws if r is not None)
        await self.redis.set(bytes_key(tenant), total, nx=True)

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        raw = await self.redis.get(file_key(tenant, file_id))
        return None if raw is None else FileRecord.model_validate_json(raw)

    async def delete(
        self,
        tenant: str,
        file_id: str,
        *,
        watch: Sequence[str] = (),
        unless: Callable[[FileRecord], Awaitable[None]] | None = None,
    ) -> FileRecord | None:
        """The record removed, or None when there was none (another delete won).

        `unless` may refuse the delete by raising; it reads what it needs after the record and
        the keys in `watch` are watched, and the delete happens only if none of them changed
        in between (else it is read again): a check and the delete are one step."""
        key = file_key(tenant, file_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key, bytes_key(tenant), *watch)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    record = FileRecord.model_validate_json(raw)
                    if unless is not None:
                        await unless(record)
                    score = await pipe.zscore(index_key(tenant), file_id)
                    counted = await pipe.exists(bytes_key(tenant))
                    pipe.multi()  # type: ignore[no-untyped-call, unused-ignore]
                    if counted:
                        pipe.decrby(bytes_key(tenant), record.bytes)
                    pipe.delete(key)
                    pipe.zrem(index_key(tenant), file_id)
                    pipe.zrem(index_key(tenant, record.purpose), file_id)
                    if score is not None:
                        pipe.set(gone_key(tenant, file_id), repr(float(score)), ex=GONE_TTL_S)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def page(
        self, tenant: str, purpose: str | None, limit: int, order: Order, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Up to `limit` files after the one named `after`, and whether more follow."""
        index = index_key(tenant, purpose)
        try:
            ids, more = await self._pages.page(index, limit, desc=order == "desc", after=after)
        except AfterNotFound:  # deleted since the last page? resume where it stood
            assert after is not None
            gone = await self.redis.get(gone_key(tenant, after))
            if gone is None:
                raise
            ids, more = await self._pages.page(
                index, limit, desc=order == "desc", after=after, after_score=float(gone)
            )
        if not ids:
            return [], False
        raws = await self.redis.mget([file_key(tenant, i) for i in ids])  # one slot
        return [FileRecord.model_validate_json(r) for r in raws if r is not None], more
