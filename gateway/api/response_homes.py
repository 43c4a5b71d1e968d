"""Where stored Responses live: a tenant's response id → the engine that made it.

vLLM keeps a stored response (`store`, its default) in the memory of the engine that made it,
so whatever names the id later (`previous_response_id`, GET, cancel) must reach that engine.
The gateway notes the engine when the engine's answer names the id, under the tenant: a tenant
finds only its own ids, so it can never read, continue or delete another tenant's response.

With Redis: `llmaas:{t:<tenant>}:resp:<id>` holds JSON `[model, engine URL]` and expires
after `responses.ttl_s`. Without Redis (no `redis_url`): a bounded dict in this process. With
Redis, a home Redis could not take (down, full, read-only) waits in that dict, where this
process finds it, and goes to Redis (a task tries every FLUSH_EVERY_S): the client was
answered 200 with the response, so it must be able to read and continue it.

A delete must stay one though a home waits somewhere: DELETE replaces the home in Redis with
`DELETED` (a tombstone, for `responses.ttl_s`, longer than any waiting home lives) instead of
removing the key, and a waiting home is written only where the key is absent (SET NX), so no
replica's flush brings a deleted response back; one key, no script. A delete while Redis cannot
be written, of a home waiting here, waits here as `GONE` in the home's place (the response is
not found here from then on) and goes to Redis as the tombstone the same way.

What still waits when the process stops (Redis away longer than close's one try) is written to
disk under `metering.spill_dir` and waits again in the next process started there, which writes
it to Redis once Redis takes writes (gateway/api/homes_spill.py); until then only that process
finds it, as the one that made it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson
from redis.asyncio import Redis

from gateway.api.homes_spill import SUBDIR, SpilledHome, take_homes, write_homes
from gateway.redis_client import REDIS_FAILURES

_LOG = logging.getLogger("llmaas.responses")

MAX_ID_CHARS = 256  # longer ids are never looked up (vLLM's are "resp_" + 32 hex digits)
_FLUSH_BATCH = 100  # homes waiting for Redis looked at at once
FLUSH_EVERY_S = 1.0  # how often homes Redis could not take are written to it again
# A deleted response's key holds this (see above): a home of no model on no engine, so that a
# replica of the release before, which reads every value as [model, engine], answers 404 for it
# in a rolling update (a value that is not JSON made it fail).
DELETED = b'["",""]'


@dataclass(frozen=True, slots=True)
class Home:
    model: str  # the model the response was made with
    engine: str  # the engine's base URL


class ResponseHomes(Protocol):
    async def remember(self, tenant: str, response_id: str, home: Home) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def find(self, tenant: str, response_id: str) -> Home | None: ...

    async def forget(self, tenant: str, response_id: str) -> bool:
        """True if the id was known (and is not any more)."""
        ...


def home_key(tenant: str, response_id: str) -> str:
    return f"llmaas:{{t:{tenant}}}:resp:{response_id}"


GONE = Home("", "")  # in RedisHomes.pending: a delete waiting for Redis (never a real home)


class RedisHomes:
    """Homes in Redis; those Redis could not take wait in `pending` (bounded as without Redis),
    written there by a task every FLUSH_EVERY_S until none waits; at close, those still waiting
    go to a file in `spill_dir`, and `start` takes such files back."""

    def __init__(self, redis: Redis, ttl_s: float, pending_max: int, spill_dir: Path) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.pending = MemoryHomes(ttl_s, pending_max)
        self.spill_dir = spill_dir / SUBDIR
        self.flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The homes stopped processes left on disk wait here, each with the time it has left."""
        try:
            spilled = await asyncio.to_thread(take_homes, self.spill_dir)
        except OSError as exc:
            _LOG.error(
                "response homes on disk unreadable",
                extra={"fields": {"error": str(exc), "dir": str(self.spill_dir)}},
            )
            return
        now = time.time()
        for s in spilled:
            if s.expires > now:
                home = Home(s.model, s.engine)
                await self._wait(s.tenant, s.response_id, home, s.expires - now)
        if spilled:
            _LOG.info(
                "response homes taken from disk, waiting for Redis",
                extra={"fields": {"count": len(spilled), "dir": str(self.spill_dir)}},
            )

    async def remember(self, tenant: str, response_id: str, home: Home) -> None:
        """Raises the store's error when Redis could not take it, after keeping it here."""
        try:
            await self._write(tenant, response_id, home, self.ttl_ms)
        except REDIS_FAILURES:
            await self._wait(tenant, response_id, home)
            raise

    async def find(self, tenant: str, response_id: str) -> Home | None:
        if len(response_id) > MAX_ID_CHARS:
            return None
        waiting = await self.pending.find(tenant, response_id)
        if waiting == GONE:
            return None
        try:
            raw = await self.redis.get(home_key(tenant, response_id))
        except REDIS_FAILURES:
            # Looked at again: a write that failed meanwhile (the create's own, on a Redis that
            # hangs, gives up just before this read does) left its home here.
            waiting = await self.pending.find(tenant, response_id)
            if waiting is None:
                raise
            return None if waiting == GONE else waiting
        if raw is None:
            return waiting
        if raw == DELETED:
            return None
        model, engine = orjson.loads(raw)
        return Home(str(model), str(engine))

    async def forget(self, tenant: str, response_id: str) -> bool:
        """A home waiting here is dropped first (no flush writes it from then on); Redis then
        holds DELETED in its place. Redis failing, a delete of a home that waited here waits
        in its place (it lived here only, unless Redis took it and answered late)."""
        if len(response_id) > MAX_ID_CHARS:
            return False
        waiting = await self.pending.find(tenant, response_id)
        if waiting == GONE:
            return False  # (deleted already: its tombstone waits)
        await self.pending.forget(tenant, response_id)
        try:
            old = await self.redis.set(
                home_key(tenant, response_id), DELETED, px=self.ttl_ms, get=True
            )
        except REDIS_FAILURES:
            if waiting is None:
                raise
            await self._wait(tenant, response_id, GONE)
            return True
        return waiting is not None or old not in (None, DELETED)

    async def _wait(
        self, tenant: str, response_id: str, home: Home, ttl_s: float | None = None
    ) -> None:
        """`home` (or GONE) waits here for Redis: the flusher runs until none waits."""
        await self.pending.remember(tenant, response_id, home, ttl_s)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flushing(), name="response-homes")

    async def close(self) -> None:
        """At shutdown: the homes still waiting get one more try, then go to disk (they were
        dropped: the responses, though their engines held them, were 404 on every replica)."""
        if self.flusher is not None:
            self.flusher.cancel()
            await asyncio.gather(self.flusher, return_exceptions=True)
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(1.0):
                await self._flush()
        await self._spill()

    async def _spill(self) -> None:
        wall = time.time() - time.monotonic()  # monotonic expiry + wall = Unix time
        homes = [
            SpilledHome(tenant, response_id, home.model, home.engine, expires + wall)
            for (tenant, response_id), expires, home in self.pending.oldest(len(self.pending))
        ]
        if not homes:
            return
        fields = {"count": len(homes), "dir": str(self.spill_dir)}
        try:
            await asyncio.to_thread(write_homes, self.spill_dir, homes)
        except OSError as exc:
            _LOG.error(
                "response homes lost at shutdown", extra={"fields": {**fields, "error": str(exc)}}
            )
            return
        _LOG.warning(
            "response homes kept on disk at shutdown (Redis unreachable)", extra={"fields": fields}
        )

    async def _write(
        self, tenant: str, response_id: str, home: Home, ttl_ms: int, *, late: bool = False
    ) -> None:
        """`late`: a home that waited, written only where the key is absent (never over a
        DELETED); GONE, the tombstone itself."""
        key = home_key(tenant, response_id)
        if home == GONE:
            await self.redis.set(key, DELETED, px=ttl_ms)
        else:
            value = orjson.dumps([home.model, home.engine])
            await self.redis.set(key, value, px=ttl_ms, nx=late)

    async def _flushing(self) -> None:
        """Until no home waits: every FLUSH_EVERY_S, those waiting go to Redis (other replicas
        found them only once this replica served another Responses call)."""
        while self.pending.oldest(1):
            await asyncio.sleep(FLUSH_EVERY_S)
            with contextlib.suppress(*REDIS_FAILURES):
                await self._flush()

    async def _flush(self) -> None:
        """The homes waiting here go to Redis, each with the time it has left; raises at the
        first Redis refuses (they wait for the next round)."""
        while entries := self.pending.oldest(_FLUSH_BATCH):
            for (tenant, response_id), expires, home in entries:
                left_ms = int((expires - time.monotonic()) * 1000)
                if left_ms > 0:
                    await self._write(tenant, response_id, home, left_ms, late=True)
                self.pending.drop(tenant, response_id, home)


class MemoryHomes:
    """The same in one process: at most `max_entries`, the oldest dropped first."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._homes: OrderedDict[tuple[str, str], tuple[float, Home]] = OrderedDict()

    async def remember(
        self, tenant: str, response_id: str, home: Home, ttl_s: float | None = None
    ) -> None:
        """`ttl_s`: the time it has left, when not `ttl_s` (one taken back from disk)."""
        key = (tenant, response_id)
        self._homes.pop(key, None)
        self._homes[key] = (time.monotonic() + (self.ttl_s if ttl_s is None else ttl_s), home)
        while len(self._homes) > self.max_entries:
            self._homes.popitem(last=False)

    async def find(self, tenant: str, response_id: str) -> Home | None:
        found = self._homes.get((tenant, response_id))
        if found is None:
            return None
        expires, home = found
        if expires <= time.monotonic():
            del self._homes[(tenant, response_id)]
            return None
        return home

    async def forget(self, tenant: str, response_id: str) -> bool:
        return await self.find(tenant, response_id) is not None and bool(
            self._homes.pop((tenant, response_id), None)
        )

    async def start(self) -> None:
        pass  # (nothing was kept)

    async def close(self) -> None:
        pass  # (nothing waits for anything)

    def __len__(self) -> int:
        return len(self._homes)

    def oldest(self, count: int) -> list[tuple[tuple[str, str], float, Home]]:
        """Up to `count` entries, the oldest first: ((tenant, id), expiry (monotonic), home)."""
        entries: list[tuple[tuple[str, str], float, Home]] = []
        for key, (expires, home) in self._homes.items():
            if len(entries) == count:
                break
            entries.append((key, expires, home))
        return entries

    def drop(self, tenant: str, response_id: str, home: Home) -> None:
        """Forget the id if it still names `home` (it may have been remembered again since)."""
        found = self._homes.get((tenant, response_id))
        if found is not None and found[1] == home:
            del self._homes[(tenant, response_id)]
