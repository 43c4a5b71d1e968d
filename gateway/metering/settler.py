"""Settling requests so that none is lost: now if Redis answers, else later.

Settlements are group-committed: while one pipeline is on its way to Redis, those that arrive
gather into the next, so concurrent requests share round trips. A request does not wait for
its batch (`submit`: its answer was sent, and its slot is free at once); `settle` waits, at
most `write_timeout_s`, until the record is in Redis or queued. One Redis did not take in time
waits in a bounded in-memory queue that a background task retries with backoff (oldest first,
in batches). What does not fit the queue goes to this process's spill file, and so does
whatever is still queued when shutdown's flush gives up; spill files are replayed when Redis
is back, by this process or any later one. Requests are never refused for metering's sake: a
full queue costs disk, not availability. Every write is idempotent, so a retry or a replay
never counts twice. Spill files name their ledger (its id, read once from Redis); files of
another ledger are reported, never replayed into this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from gateway.metering.ledger import Ledger
from gateway.metering.settlement import Settlement
from gateway.metering.spill import SpillDir, count_lines, read_spill
from gateway.metrics import Metrics, model_label
from gateway.outage_log import OutageLog
from gateway.redis_client import REDIS_FAILURES, redis_error
from gateway.settings import MeteringSettings

BATCH = 200
# How long a batch may wait to go in the write of an admission (or of any call that is not
# lazy) before it goes alone: no request waits for it, and at a low rate several requests'
# settlements then share one write. A batch that frees a slot under a tight concurrency limit
# (limits/tight.py) waits the least: the key's next request, on this replica or
# another, may be waiting for that slot.
LINGER_S = 0.010
SLOT_LINGER_S = 0.002
FIRST_RETRY_S = 0.05
# A second Ctrl-C: Redis gets this long at most (not flush_timeout_s) before the rest spills.
HURRIED_FLUSH_S = 1.0
SPILL_LOOK_S = 30.0  # how often an idle settler looks for spill files of processes now gone


@dataclass(slots=True)
class _Batch:
    """Settlements that go to Redis in one pipeline; `done` once they are there or queued."""

    linger_s: float  # how long it may wait for company in Redis's next write
    settlements: list[Settlement] = field(default_factory=list)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Settler:
    def __init__(
        self,
        ledger: Ledger | None,
        settings: MeteringSettings,
        metrics: Metrics,
        *,
        linger_s: float = LINGER_S,
        slot_linger_s: float = SLOT_LINGER_S,
    ) -> None:
        self.ledger = ledger
        self.linger_s = linger_s
        self.slot_linger_s = slot_linger_s
        self.settings = settings
        self.metrics = metrics
        self.queue: deque[Settlement] = deque()
        self.spill = SpillDir(settings.spill_dir, ledger.location if ledger is not None else "")
        self.reported: set[str] = set()  # foreign spill files already logged
        self.spill_lock = asyncio.Lock()  # appends and claims never overlap
        self.replaying: dict[Path, int] = {}  # claimed spill files → their settlements
        self.spilled = 0  # settlements in spill files this process wrote or claimed
        self.wakeup = asyncio.Event()
        self.back = asyncio.Event()  # Redis answered an admission: a retry need not wait
        self.task: asyncio.Task[None] | None = None
        self.gathering: _Batch | None = None  # the batch that goes once the one in flight is done
        self.writer: asyncio.Task[None] | None = None  # the group committer, while it has work
        self.side: set[asyncio.Future[None]] = set()  # settlements going behind the queue
        self.closed = False
        self.flush_ends: float | None = None  # (loop time) once closing: when the flush gives up
        self.flushing: asyncio.Timeout | None = None  # the flush's wait on Redis, while it waits
        self.log = logging.getLogger("llmaas.metering")
        self.outage = OutageLog(  # (not once per attempt)
            self.log,
            "usage ledger unreachable; settlements wait in the retry queue",
            "usage ledger reachable again",
            "failed_attempts",
        )

    async def start(self) -> None:
        """Start retrying in the background; spill files left by earlier processes replay now."""
        if self.ledger is not None:
            self.task = asyncio.create_task(self._run(), name="usage-settler")

    def submit(
        self, settlement: Settlement, *, frees_slot: bool = False
    ) -> asyncio.Future[None] | None:
        """Settle without waiting: what the request path calls once its answer is sent, so
        that neither the client nor the request's slot (in-flight bound, drain) waits for
        Redis. Never raises. The future (None: nothing to wait for) is done once the
        settlement is in Redis, in the retry queue or spilled. `frees_slot`: it releases a
        lease under a tight concurrency limit: it, and a batch lingering before it, go within
        `slot_linger_s`, not `linger_s`."""
        record = settlement.record
        if record is not None:
            tokens, model = self.metrics.tokens, model_label(record.model)
            tokens.labels(record.tenant, model, "prompt").inc(record.prompt_tokens)
            tokens.labels(record.tenant, model, "completion").inc(record.completion_tokens)
        if self.ledger is None:
            return None
        if self.closed or self.queue:  # behind what waits for Redis, or to disk (rare)
            side = asyncio.ensure_future(self._behind([settlement]))
            self.side.add(side)
            side.add_done_callback(self.side.discard)
            return side
        if self.gathering is None:
            self.gathering = _Batch(self.linger_s)
        self.gathering.settlements.append(settlement)
        if frees_slot:
            self.gathering.linger_s = self.slot_linger_s
            if self.writer is not None:  # a batch may be lingering: this one waits for it
                self.ledger.hasten(self.slot_linger_s)
        if self.writer is None:
            self.writer = asyncio.create_task(self._write_batches(), name="usage-group-commit")
        return self.gathering.done

    async def settle(self, settlement: Settlement) -> None:
        """Settle and wait until it is in Redis, queued or spilled; never raises."""
        waiting = self.submit(settlement)
        if waiting is not None:
            await asyncio.shield(waiting)

    async def _behind(self, settlements: list[Settlement]) -> None:
        if self.closed:
            if not await self._spill(settlements):
                self._lost(settlements)
            return
        await self._enqueue(settlements)

    async def _write_batches(self) -> None:
        """Write gathered batches one after the other until none is waiting; a batch Redis
        did not take within write_timeout_s goes to the retry queue (if Redis took it after
        all, the retry is a no-op: writes are idempotent)."""
        assert self.ledger is not None
        try:
            while self.gathering is not None:
                batch, self.gathering = self.gathering, None
                try:
                    async with asyncio.timeout(self.settings.write_timeout_s):
                        # lazy: it goes in the write of the next admission (or `linger_s` on)
                        await self.ledger.write(batch.settlements, linger_s=batch.linger_s)
                except REDIS_FAILURES as exc:
                    self._failed(exc)
                    await self._enqueue(batch.settlements)
                except asyncio.CancelledError:  # (close() gave up waiting): queued, not lost
                    self.queue.extend(batch.settlements)
                    raise
                else:
                    self._reached()
                finally:
                    if not batch.done.done():
                        batch.done.set_result(None)
        finally:
            self.writer = None

    def hurry(self) -> None:
        """A signal once stopping (a second Ctrl-C): the flush gives Redis HURRIED_FLUSH_S more
        at most, then spills what is left (also when it is waiting on Redis already)."""
        if self.flush_ends is None:
            return
        self.flush_ends = min(self.flush_ends, asyncio.get_running_loop().time() + HURRIED_FLUSH_S)
        if self.flushing is not None:
            with contextlib.suppress(RuntimeError):  # (between two waits: an ended Timeout)
                self.flushing.reschedule(min(self.flushing.when() or math.inf, self.flush_ends))

    async def _stop_writer(self) -> None:
        """The batch being written when the flush's time ran out, and the one gathering behind
        it, go to the queue (to Redis or the spill file), not away with the writer: a second
        Ctrl-C lost them, silently."""
        if self.writer is not None:
            self.writer.cancel()
            await asyncio.gather(self.writer, return_exceptions=True)
        if self.gathering is not None:
            batch, self.gathering = self.gathering, None
            self.queue.extend(batch.settlements)
            if not batch.done.done():
                batch.done.set_result(None)

    @property
    def pending(self) -> int:
        """Settlements not yet in Redis: queued in memory, or in spill files this process owns."""
        return len(self.queue) + self.spilled

    async def close(self, *, hurry: bool = False) -> None:
        """Flush the queue within `flush_timeout_s` (HURRIED_FLUSH_S at most when `hurry`: a
        second Ctrl-C); spill what is left. Call after the last request finished (uvicorn runs
        the lifespan's shutdown after its graceful period)."""
        self.closed = True
        loop = asyncio.get_running_loop()
        self.flush_ends = loop.time() + self.settings.flush_timeout_s
        if hurry:
            self.hurry()
        with contextlib.suppress(TimeoutError):  # settlements under way end in Redis or the queue
            async with asyncio.timeout_at(self.flush_ends) as self.flushing:
                while self.writer is not None or self.side:
                    under_way = [*self.side, *([self.writer] if self.writer else [])]
                    await asyncio.gather(*under_way, return_exceptions=True)
        await self._stop_writer()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        while self.queue and self.ledger is not None and loop.time() < self.flush_ends:
            try:
                async with asyncio.timeout_at(
                    max(loop.time() + 0.01, self.flush_ends)
                ) as self.flushing:
                    await self._write_queue()
            except REDIS_FAILURES as exc:
                self._failed(exc)
                await asyncio.sleep(min(0.2, max(0.0, self.flush_ends - loop.time())))
        self.flushing = None
        if self.queue:
            left = list(self.queue)
            self.queue.clear()
            if await self._spill(left):
                self.log.warning(
                    "usage records spilled at shutdown",
                    extra={"fields": {"count": len(left), "dir": str(self.spill.path)}},
                )
            else:
                self._lost(left)
        self._gauge()

    def _lost(self, settlements: list[Settlement]) -> None:
        """Neither Redis nor the disk took them: the last place they can be recovered from is
        the log, one ERROR line each with the whole settlement (ids and counts, no content)."""
        self.metrics.usage_lost.inc(len(settlements))
        for settlement in settlements:
            self.log.error(
                "usage settlement lost",
                extra={"fields": {"settlement": settlement.to_json().decode()}},
            )

    async def _enqueue(self, settlements: list[Settlement]) -> None:
        room = max(0, self.settings.queue_max - len(self.queue))
        self.queue.extend(settlements[:room])
        overflow = settlements[room:]
        if overflow and not await self._spill(overflow):
            self.queue.extend(overflow)  # no disk to spill to: memory beyond the bound, not loss
        self.wakeup.set()
        self._gauge()

    async def _spill(self, settlements: list[Settlement]) -> bool:
        """Append to this process's spill file; False (and an error logged) if the disk fails."""
        if self.ledger is not None and self.ledger.id is not None:
            self.spill.ledger = self.ledger.id  # (Redis lost its data and another made a new id)
        try:
            async with self.spill_lock:
                await asyncio.to_thread(self.spill.append, settlements)
        except OSError as exc:
            self.metrics.usage_spill_failures.inc()
            self.log.error(
                "usage spill file unwritable",
                extra={"fields": {"error": str(exc), "dir": str(self.spill.path)}},
            )
            return False
        self.spilled += len(settlements)
        self.metrics.usage_spilled.inc(len(settlements))
        self._gauge()
        return True

    def redis_back(self) -> None:
        """Redis answered someone else (an admission): retry now, not after the backoff, so
        the leases of requests settled during the outage are freed at once (their slots made
        a key under max_concurrency look full for up to retry_max_interval_s)."""
        self.back.set()

    async def _run(self) -> None:
        delay = FIRST_RETRY_S
        while True:
            self.back.clear()
            try:
                await self._identify()
                await self._write_queue()
                await self._replay()
            except REDIS_FAILURES as exc:
                self._failed(exc, writing=False)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.back.wait()
                delay = min(delay * 2, self.settings.retry_max_interval_s)
                continue
            delay = FIRST_RETRY_S
            self._reached()
            self.wakeup.clear()
            if not self.queue:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SPILL_LOOK_S):
                        await self.wakeup.wait()

    async def _identify(self) -> None:
        """Learn the ledger's id once; until then spills are tagged with the Redis location."""
        assert self.ledger is not None
        if self.spill.ledger is None:
            async with asyncio.timeout(self.settings.write_timeout_s * 4):
                self.spill.ledger = await self.ledger.identity()
            self.log.info(
                "usage ledger identified",
                extra={"fields": {"ledger": self.spill.ledger, "redis": self.spill.redis}},
            )

    async def _write_queue(self) -> None:
        """Write the queue oldest first; a batch leaves the queue only once Redis took it."""
        assert self.ledger is not None
        while self.queue:
            batch = list(islice(self.queue, BATCH))
            async with asyncio.timeout(self.settings.write_timeout_s * 4):
                await self.ledger.write(batch)
            for _ in batch:
                self.queue.popleft()
            self._gauge()

    async def _replay(self) -> None:
        """Write claimed spill files to Redis; a file is deleted once all of it is written."""
        assert self.ledger is not None
        async with self.spill_lock:
            for file, own in await asyncio.to_thread(self.spill.claim):
                count = await asyncio.to_thread(count_lines, file)
                self.replaying[file] = count
                if not own:  # our own spills were counted when written
                    self.spilled += count
        for file in list(self.replaying):
            for batch in read_spill(file, BATCH):
                async with asyncio.timeout(self.settings.write_timeout_s * 4):
                    await self.ledger.write(batch)
            file.unlink(missing_ok=True)
            self.spilled -= self.replaying.pop(file)
            self.log.info("spill file replayed", extra={"fields": {"file": file.name}})
            self._gauge()
        await self._report_foreign()

    async def _report_foreign(self) -> None:
        """Count the settlements in spill files that are not this ledger's (each file logged
        once): they stay where they are, for the gateway of their ledger or an operator."""
        found = await asyncio.to_thread(self.spill.foreign)
        for foreign in found:
            if foreign.path.name not in self.reported:
                self.reported.add(foreign.path.name)
                self.log.warning(
                    "spill file of another ledger left in place",
                    extra={
                        "fields": {
                            "file": str(foreign.path),
                            "ledger": foreign.name.ledger or "unknown",
                            "redis": foreign.name.redis,
                            "records": foreign.records,
                            "this_ledger": self.spill.ledger,
                        }
                    },
                )
        self.metrics.usage_foreign_spill.set(sum(f.records for f in found))

    def _failed(self, exc: BaseException, *, writing: bool = True) -> None:
        """A write of settlements failed (`writing`), or the retry loop's try, which counts
        as one only with settlements waiting: with none, it only asked the ledger's id (an
        idle gateway with Redis away fired LlmaasUsageWritesFailing)."""
        if writing or self.pending:
            self.metrics.usage_write_failures.inc()
        self.outage.failed({"error": redis_error(exc), "pending": self.pending})

    def _reached(self) -> None:
        self.outage.reached({"pending": self.pending})

    def _gauge(self) -> None:
        self.metrics.usage_pending.set(self.pending)
