"""Renewing the concurrency leases of requests in flight, off the request path.

A concurrency slot is a lease that expires by itself (lease_ttl_s), so a dead gateway's slots
come back; but a stream that outlives the ttl would lose its slot and `max_concurrency` would
undercount. So every lease a live request holds is renewed every ttl/3 (renew.lua, which
never adds back a lease settled meanwhile): one task per process renews them all, in one
pipelined round trip per batch. A request's lease leaves the set when it is settled. Renewal
is best effort: a failure (Redis away) is logged and counted, the next tick tries again, and
the request itself never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.auth.principal import Principal
from gateway.limits.limiter import Limiter
from gateway.outage_log import OutageLog
from gateway.redis_client import REDIS_FAILURES, redis_error

BATCH = 500  # leases per pipelined round trip


class Renewals:
    def __init__(self, limiter: Limiter, interval_s: float) -> None:
        """`interval_s`: a third of the lease ttl, so two ticks may fail before a lease
        expires; also the longest wait for Redis per batch (it must be done by the next)."""
        self.limiter = limiter
        self.interval_s = interval_s
        self.live: dict[str, Principal] = {}  # lease id → its caller (whose keys hold it)
        self.renewed = 0  # lease-set entries renewed, since start
        self.failures = 0  # batches Redis did not take
        self.task: asyncio.Task[None] | None = None
        self.log = logging.getLogger("llmaas.limits")
        self.outage = OutageLog(
            self.log,
            "lease renewal failed, will retry (logged again once it goes through)",
            "lease renewals go through again",
            "failed_batches",
        )

    def hold(self, caller: Principal, lease: str) -> None:
        """Renew `lease` until `drop`; never waits and never raises."""
        self.live[lease] = caller
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="lease-renewals")
            self.task.add_done_callback(self._stopped)

    def drop(self, lease: str) -> None:
        self.live.pop(lease, None)

    def redis_back(self) -> None:
        """Redis answered an admission: the end of an outage for renewals too, unless a lease
        waits for renewal (the next tick's will say). Only a renewal said so before, and with
        no stream long enough to need one the outage never ended: its line came at the next
        outage's start, and that outage's first failure was not logged."""
        if not self.live:
            self.outage.reached()

    async def close(self) -> None:
        if self.task is None:
            return
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            leases = [(caller, lease) for lease, caller in self.live.items()]
            for start in range(0, len(leases), BATCH):
                await self._renew(leases[start : start + BATCH])

    async def _renew(self, batch: list[tuple[Principal, str]]) -> None:
        try:
            async with asyncio.timeout(self.interval_s):
                self.renewed += await self.limiter.renew(batch)
        except REDIS_FAILURES as exc:
            self.failures += 1
            self.outage.failed({"error": redis_error(exc), "leases": len(batch)})
            return
        self.outage.reached()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug: log it; the next hold starts a new one."""
        with contextlib.suppress(asyncio.CancelledError):
            if task.exception() is not None:
                self.log.error("lease renewals stopped", exc_info=task.exception())
                self.task = None
