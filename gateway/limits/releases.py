"""Releasing admissions the gateway gave up on, off the request path.

A client told that the limiter is unavailable must not be charged for its request, but its
admission may have run in Redis all the same (the reply came too late, or the connection broke
after the script was sent). So its lease is released (release.lua: once, and an admission that
arrives later is cancelled). One background task sends the releases in order and retries with
backoff while Redis does not take them, until nothing is left to give back anyway (the lease
has expired). The queue is bounded: in a long outage, what does not fit waits for its TTL.
What is still queued when the process stops is handed back (`close`): the gateway settles
those leases through the ledger, which spills what Redis does not take to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.limits.limiter import Limiter
from gateway.metrics import Metrics
from gateway.outage_log import OutageLog
from gateway.redis_client import REDIS_FAILURES, redis_error

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0
MAX_PENDING = 10_000
BATCH = 256  # releases sent in one round trip once Redis takes them again


@dataclass(frozen=True, slots=True)
class _Pending:
    caller: Principal
    lease: str
    until: float  # time.monotonic() after which the lease has expired: nothing to give back


class Releases:
    def __init__(
        self, limiter: Limiter, metrics: Metrics, horizon_s: float, max_pending: int = MAX_PENDING
    ) -> None:
        self.limiter = limiter
        self.metrics = metrics
        self.horizon_s = horizon_s
        self.max_pending = max_pending
        self.queue: deque[_Pending] = deque()
        self.wakeup = asyncio.Event()
        self.back = asyncio.Event()  # Redis answered an admission: a retry need not wait
        self.drained = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.log = logging.getLogger("llmaas.limits")
        self.outage = OutageLog(  # (a line per retry was 24 in 40 s of a hang)
            self.log,
            "lease release failed, will retry (logged again once it goes through)",
            "lease releases go through again",
            "failed_retries",
        )

    def add(self, caller: Principal, lease: str) -> None:
        """Release `lease` soon; never waits and never raises."""
        if len(self.queue) >= self.max_pending:
            self._count("dropped")
            return
        self.queue.append(_Pending(caller, lease, time.monotonic() + self.horizon_s))
        self.drained.clear()
        self.wakeup.set()
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="limit-releases")
            self.task.add_done_callback(self._stopped)

    def redis_back(self) -> None:
        """Redis answered an admission: retry now, not after the backoff."""
        self.back.set()

    async def close(self, grace_s: float = 2.0) -> list[tuple[Principal, str]]:
        """Give what is queued `grace_s` to go through, then stop; the leases not released
        by then (and not expired), oldest first."""
        if self.task is None:
            return []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.drained.wait()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.task = None
        now = time.monotonic()
        left = [(p.caller, p.lease) for p in self.queue if p.until >= now]
        self.queue.clear()
        return left

    async def _run(self) -> None:
        delay = FIRST_RETRY_S
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                self.back.clear()
                if await self._release_oldest():
                    delay = FIRST_RETRY_S
                    await self._release_batch()  # Redis takes them: the rest together
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.back.wait()
                    delay = min(delay * 2, MAX_RETRY_S)
            self.drained.set()

    async def _release_oldest(self) -> bool:
        """False when Redis did not take it (it stays first in line)."""
        pending = self.queue[0]
        if time.monotonic() > pending.until:
            self.queue.popleft()
            self._count("expired")
            return True
        try:
            outcome = await self.limiter.release(pending.caller, pending.lease)
        except REDIS_FAILURES as exc:
            self.outage.failed({"error": redis_error(exc), "pending": len(self.queue)})
            return False
        self.queue.popleft()
        self._count(outcome)
        self.outage.reached()
        return True

    async def _release_batch(self) -> None:
        """Up to BATCH of the oldest in one pipelined round trip, not one each: after an
        outage, hundreds queued freed their slots one round trip at a time while new
        admissions counted them, and a key far under its max_concurrency got 429s. If Redis
        does not take them, they stay queued, in order, for the next retry."""
        batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
        now = time.monotonic()
        live = [p for p in batch if p.until >= now]
        for _ in range(len(batch) - len(live)):
            self._count("expired")
        if not live:
            return
        try:
            outcomes = await self.limiter.release_many([(p.caller, p.lease) for p in live])
        except REDIS_FAILURES:
            self.queue.extendleft(reversed(live))
            return
        for outcome in outcomes:
            self._count(outcome)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug: log it; the next release starts a new one."""
        if not task.cancelled() and task.exception() is not None:
            self.log.error("lease releases stopped", exc_info=task.exception())
            self.task = None

    def _count(self, outcome: str) -> None:
        self.metrics.ratelimit_releases.labels(outcome).inc()
