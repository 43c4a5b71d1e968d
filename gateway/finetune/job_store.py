"""Fine-tuning jobs, their events and the models they made, in Redis.

Per tenant, under its hash tag (one slot): `ftjob:<id>` (the job's JSON), `ftjob:<id>:events`
(a list, oldest first, each entry "<seq> <json>"), `ftjobs` (ids by creation), `ftjobs:active`
(the ids counted against the tenant's limit) and `ftmodels` (fine-tuned model name → JSON).
Across tenants, each on its own key: `llmaas:ft:queue` (jobs waiting for a trainer, FIFO) and
`llmaas:ft:running` (jobs being trained, scored by when their trainer's heartbeat is due).

Every change of a job's state is a compare-and-set (WATCH on its key): a cancel and a trainer's
claim can race, and exactly one of them wins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gateway.finetune.jobs import FINAL, Event, Job, Status
from gateway.redis_client import REDIS_FAILURES, landed
from gateway.redis_pages import IndexPages

log = logging.getLogger("llmaas.finetune")
QUEUE = "llmaas:ft:queue"
RUNNING = "llmaas:ft:running"
# Jobs being created, scored by when a sweep may put them in the queue: a job is stored under
# its tenant's hash tag and queued in QUEUE, two steps (no one MULTI spans both slots on Redis
# Cluster); a gateway that died between them left a queued job no trainer would ever take.
PENDING = "llmaas:ft:pending"
PENDING_GRACE_MS = 60_000
MAX_EVENTS = 10_000  # per job; older ones are dropped first

_PUSH_EVENT = """
local n = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], n .. ' ' .. ARGV[1])
if redis.call('LLEN', KEYS[1]) > tonumber(ARGV[2]) then redis.call('LPOP', KEYS[1]) end
return n
"""


def _tag(tenant: str) -> str:
    return f"llmaas:{{t:{tenant}}}"


def job_key(tenant: str, job_id: str) -> str:
    return f"{_tag(tenant)}:ftjob:{job_id}"


class LimitReached(Exception):
    """The tenant already has as many active jobs as it may."""


class RequiredKeyGone(Exception):
    """A key a new job needs (its training file's record) was gone when the job was stored."""


def active_key(tenant: str) -> str:
    """The set of the tenant's job ids counted as active (queued, running, paused, ...)."""
    return f"{_tag(tenant)}:ftjobs:active"


def _member(tenant: str, job_id: str) -> str:
    return f"{tenant}/{job_id}"


def parse_member(member: bytes | str) -> tuple[str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    tenant, _, job_id = text.partition("/")
    return tenant, job_id


class JobStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._push = redis.register_script(_PUSH_EVENT)
        self._pages = IndexPages(redis)

    # -- jobs ---------------------------------------------------------------------------------

    async def create(
        self, job: Job, max_active: int, messages: list[str], *, requires: str | None = None
    ) -> None:
        """Store a new (queued) job, counted as active, with its first events, and queue it;
        LimitReached when the tenant is at its limit. `requires`: a key of the tenant's (its
        training file's record) that must still exist when the job is stored, else
        RequiredKeyGone: a delete of that file checks the active jobs and deletes in one step
        too (FileStore.delete), so one of the two wins. Noted in PENDING first, so that a
        gateway dying before the job is queued leaves it to `queue_stranded`."""
        member = _member(job.tenant, job.id)
        await self.redis.zadd(PENDING, {member: time.time_ns() // 1_000_000 + PENDING_GRACE_MS})
        try:
            await self._store(job, max_active, messages, requires)
        except (LimitReached, RequiredKeyGone):
            await self.redis.zrem(PENDING, member)
            raise
        except REDIS_FAILURES as exc:  # (a 503 "try again": a retry made a second job)
            if not await self._stored_all_the_same(exc, job):
                raise
        try:
            await self.enqueue(job)
            await self.redis.zrem(PENDING, member)
        except RedisError:  # stored: a trainer's sweep queues it once its grace has passed
            log.warning(  # (a 503 here made the SDK retry the create: two jobs, both trained)
                "job %s stored but not queued yet; the trainers' sweep queues it", job.id
            )

    async def _stored_all_the_same(self, exc: BaseException, job: Job) -> bool:
        """Whether the transaction storing `job`, which raised `exc`, ran all the same
        (redis_client.landed): its record is there (its id is new: only this write makes it)."""

        async def stored() -> bool:
            return bool(await self.redis.exists(job_key(job.tenant, job.id)))

        return await landed(exc, stored)

    async def queue_stranded(self, now_ms: int) -> int:
        """Queue the jobs whose creation stopped between being stored and being queued (past
        their grace); how many were queued."""
        members = cast("list[bytes]", await self.redis.zrangebyscore(PENDING, "-inf", now_ms))
        queued = 0
        for member in members:
            job = await self.get(*parse_member(member))
            if job is not None and job.status == "queued":
                queued += await self.enqueue(job)
            await self.redis.zrem(PENDING, member)
        return queued

    async def _store(
        self, job: Job, max_active: int, messages: list[str], requires: str | None
    ) -> None:
        t = job.tenant
        active = active_key(t)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(active, *([] if requires is None else [requires]))
                    if requires is not None and not await pipe.exists(requires):
                        raise RequiredKeyGone(requires)
                    if int(await pipe.scard(active)) >= max_active:
                        raise LimitReached(t)
                    pipe.multi()  # type: ignore[no-untyped-call, unused-ignore]
                    pipe.set(job_key(t, job.id), job.model_dump_json())
                    # ordered to the millisecond (created_at has seconds): a listing is newest
                    # first for jobs made within one second too
                    made_ms = max(job.created_at * 1000, time.time_ns() // 1_000_000)
                    pipe.zadd(f"{_tag(t)}:ftjobs", {job.id: made_ms})
                    pipe.sadd(active, job.id)
                    for message in messages:
                        event = Event(id="", created_at=job.created_at, message=message)
                        await self._event(pipe, job, event)
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    async def get(self, tenant: str, job_id: str) -> Job | None:
        raw = await self.redis.get(job_key(tenant, job_id))
        return None if raw is None else Job.model_validate_json(raw)

    async def active(self, tenant: str) -> list[Job]:
        """The tenant's jobs counted as active (queued or running; a few at most)."""
        members = await self.redis.smembers(active_key(tenant))
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not ids:
            return []
        raws = await self.redis.mget([job_key(tenant, i) for i in ids])
        return [Job.model_validate_json(raw) for raw in raws if raw is not None]

    async def page(self, tenant: str, limit: int, after: str | None) -> tuple[list[Job], bool]:
        """Newest first, up to `limit` after the job named `after`."""
        index = f"{_tag(tenant)}:ftjobs"
        ids, more = await self._pages.page(index, limit, desc=True, after=after)
        if not ids:
            return [], False
        raws = await self.redis.mget([job_key(tenant, i) for i in ids])
        return [Job.model_validate_json(r) for r in raws if r is not None], more

    async def transition(
        self,
        tenant: str,
        job_id: str,
        allowed: tuple[Status, ...],
        update: Mapping[str, Any],
        *,
        message: str | None = None,
        level: str = "info",
    ) -> Job | None:
        """Apply `update` if the job's status is one of `allowed` (atomically); the new job, or
        None when it is in another state (or gone)."""
        key = job_key(tenant, job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    job = Job.model_validate_json(raw)
                    if job.status not in allowed:
                        return None
                    new = Job.model_validate({**job.model_dump(), **update})
                    pipe.multi()  # type: ignore[no-untyped-call, unused-ignore]
                    pipe.set(key, new.model_dump_json())
                    if new.status in FINAL:
                        pipe.srem(active_key(tenant), job_id)
                    if message is not None:
                        event = Event(id="", created_at=int(time.time()), message=message)
                        await self._event(pipe, new, event.model_copy(update={"level": level}))
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    # -- events -------------------------------------------------------------------------------

    async def add_event(self, job: Job, event: Event) -> None:
        await self._push(keys=self._event_keys(job), args=[_event_json(event), MAX_EVENTS])

    async def _event(self, pipe: Any, job: Job, event: Event) -> None:
        await self._push(
            keys=self._event_keys(job), args=[_event_json(event), MAX_EVENTS], client=pipe
        )

    def _event_keys(self, job: Job) -> list[str]:
        base = job_key(job.tenant, job.id)
        return [f"{base}:events", f"{base}:eventseq"]

    async def events(self, job: Job, limit: int, after: str | None) -> tuple[list[Event], bool]:
        """Newest first, up to `limit` older than the event named `after`: one of this job's
        events still kept (KeyError otherwise, as for an id of another job's)."""
        prefix = f"ftevent-{job.id[6:18]}-"
        before = _seq_of(prefix, after) if after is not None else None
        raw = cast(
            "list[bytes]", await self.redis.lrange(self._event_keys(job)[0], 0, -1)
        )  # bounded by MAX_EVENTS
        events = []
        seen_after = before is None
        for entry in reversed(raw):
            seq_text, _, body = entry.partition(b" ")
            seq = int(seq_text)
            if before is not None and seq >= before:
                seen_after = seen_after or seq == before
                continue
            if not seen_after:
                break
            fields = orjson.loads(body)
            events.append(Event(id=f"{prefix}{seq}", **fields))
            if len(events) > limit:
                break
        if not seen_after:
            raise KeyError(after)
        return events[:limit], len(events) > limit

    # -- the queue and the trainers' heartbeats ------------------------------------------------

    async def enqueue(self, job: Job) -> bool:
        """Put the job in the queue, unless it still is (paused while queued, then resumed): a
        trainer takes it once. (A second entry is harmless, only wasted: whoever takes it finds
        the job no longer queued, or loses its claim.) Whether it was put there."""
        member = _member(job.tenant, job.id)
        if await self.redis.lpos(QUEUE, member) is not None:
            return False
        await self.redis.lpush(QUEUE, member)
        return True

    async def put_first(self, job: Job) -> None:
        """Put the job at the queue's front (a run its trainer stopped before the end: the next
        trainer goes on with it first)."""
        await self.redis.rpush(QUEUE, _member(job.tenant, job.id))

    async def next_queued(self, timeout_s: float) -> tuple[str, str] | None:
        popped = await self.redis.brpop([QUEUE], timeout=timeout_s)
        return None if popped is None else parse_member(popped[1])

    async def heartbeat(self, job: Job, deadline_ms: int) -> None:
        await self.redis.zadd(RUNNING, {_member(job.tenant, job.id): deadline_ms})

    async def trained_now(self, tenant: str, job_id: str) -> bool:
        """Whether a live trainer still holds the job (its heartbeat deadline is ahead)."""
        deadline = await self.redis.zscore(RUNNING, _member(tenant, job_id))
        return deadline is not None and deadline >= time.time() * 1000

    async def done(self, job: Job) -> None:
        await self.redis.zrem(RUNNING, _member(job.tenant, job.id))

    async def overdue(self, now_ms: int) -> list[tuple[str, str]]:
        members = cast("list[bytes]", await self.redis.zrangebyscore(RUNNING, "-inf", now_ms))
        return [parse_member(m) for m in members]

    async def forget_running(self, tenant: str, job_id: str) -> None:
        await self.redis.zrem(RUNNING, _member(tenant, job_id))

    # -- fine-tuned models ---------------------------------------------------------------------

    async def put_model(self, tenant: str, name: str, record: Mapping[str, Any]) -> None:
        await self.redis.hset(f"{_tag(tenant)}:ftmodels", name, orjson.dumps(dict(record)))

    async def get_model(self, tenant: str, name: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"{_tag(tenant)}:ftmodels", name)
        return None if raw is None else cast("dict[str, Any]", orjson.loads(raw))

    async def models(self, tenant: str) -> dict[str, dict[str, Any]]:
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(f"{_tag(tenant)}:ftmodels"))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def delete_model(self, tenant: str, name: str) -> bool:
        return bool(await self.redis.hdel(f"{_tag(tenant)}:ftmodels", name))


def _event_json(event: Event) -> bytes:
    return orjson.dumps(event.model_dump(exclude={"id"}))


def _seq_of(prefix: str, event_id: str) -> int:
    tail = event_id.removeprefix(prefix)
    if tail == event_id or not tail.isdigit():
        raise KeyError(event_id)
    return int(tail)
