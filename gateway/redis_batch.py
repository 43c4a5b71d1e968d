"""One Lua script's calls, pipelined across concurrent requests.

Each request admitted against its limits runs one script in Redis. One at a time, a call goes
straight out; while calls are on the wire, those that arrive gather and go together, as one
pipeline, when the writer is free: one write and one read for many requests instead of one
pool checkout and two system calls each (the usage ledger group-commits its writes the same
way). A caller that stops waiting (its deadline passed) is skipped if its call has not gone
yet; one whose call went gets nothing back, which the caller's lease design already covers
(an admission given up on is released by its lease id). Errors reach every caller of the
batch they were in, as redis-py would have raised them to each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class ScriptBatches:
    def __init__(self, redis: Redis, script: str) -> None:
        self.redis = redis
        self.script = redis.register_script(script)  # the direct call (loads on NOSCRIPT)
        self.on_wire = 0  # calls or pipelines sent and not yet answered
        self.gathering: list[_Call] = []
        self.writer: asyncio.Task[None] | None = None
        self.trips = 0  # round trips taken (a direct call or a pipeline), for tests and benches

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self.on_wire == 0 and not self.gathering:  # nothing to share a trip with
            self.on_wire += 1
            self.trips += 1
            try:
                return await self.script(keys=keys, args=args)
            finally:
                self.on_wire -= 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.gathering.append((keys, args, future))
        if self.writer is None:
            self.writer = asyncio.create_task(self._write(), name="redis-script-batches")
        return await future

    async def _write(self) -> None:
        try:
            while self.gathering:
                batch = [call for call in self.gathering if not call[2].done()]
                self.gathering = []
                if batch:
                    self.on_wire += 1
                    try:
                        await self._send(batch)
                    finally:
                        self.on_wire -= 1
        finally:
            self.writer = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            if any(isinstance(reply, NoScriptError) for reply in replies):  # Redis restarted
                await self.redis.script_load(self.script.script)
                replies = await self._pipeline(batch)
        except Exception as exc:  # every caller of the batch gets what it would have alone
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for _, _, future in batch:
                future.cancel()
            raise
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        sha = self.script.sha
        self.trips += 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
