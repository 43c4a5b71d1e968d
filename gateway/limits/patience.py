"""A deadline for Redis that does not count the time this process was too busy to listen.

On a busy machine a reply that Redis sent at once can sit unread while the event loop works
through other requests; asyncio.timeout would call that Redis slow. So when the deadline comes,
it asks how busy the loop is: how late its timer fired, plus how long the loop then takes for
two more rounds (the rounds in which a reply already on the socket would be read and handed to
its task). If that is more than a small share of the timeout, the deadline moves on by as much.
Only a loop that keeps up, with the reply still not there, ends the wait; and nothing waits
longer than `most_s` in all.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

BUSY_SHARE = 0.05  # a loop lagging more than this share of the timeout is busy, not waiting
ROUNDS = 2  # a reply on the socket: one round reads it, the next runs its task
BUSY_FACTOR = 10  # a busy process waits for Redis up to this many timeouts in all


class Patience:
    """`async with Patience(1.0, 10.0):` raises TimeoutError as asyncio.timeout does."""

    __slots__ = ("budget", "due", "handle", "last", "loop", "most_s", "timeout_s")

    def __init__(self, timeout_s: float, most_s: float) -> None:
        self.timeout_s = timeout_s
        self.most_s = most_s

    async def __aenter__(self) -> Patience:
        self.loop = asyncio.get_running_loop()
        self.budget = asyncio.timeout(None)
        await self.budget.__aenter__()
        now = self.loop.time()
        self.due = now + self.timeout_s
        self.last = now + self.most_s
        self.handle: asyncio.Handle = self.loop.call_at(self.due, self._round, ROUNDS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.handle.cancel()
        await self.budget.__aexit__(exc_type, exc, tb)

    def _round(self, left: int) -> None:
        if left:
            self.handle = self.loop.call_soon(self._round, left - 1)
            return
        now = self.loop.time()
        lag = now - self.due  # the timer's lateness and the rounds since
        if lag > self.timeout_s * BUSY_SHARE and now < self.last:
            self.due = min(now + lag, self.last)
            self.handle = self.loop.call_at(self.due, self._round, ROUNDS)
        else:
            self.budget.reschedule(now)  # cancels the waiting task: TimeoutError on exit
