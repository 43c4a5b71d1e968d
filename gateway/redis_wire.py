"""One pipelined Redis connection's protocol: what gathers, when it is written, whose reply is
which (RedisPipe, gateway/redis_pipe.py, opens it and hands it calls).

Every call goes out on the connection as the next batch:

- nothing on the wire: the call is written at once (a lone request pays no wait);
- a batch on the wire: the call gathers, and the whole gathering is written in one system call
  as soon as the last reply of the batch on the wire has been read, from the callback that read
  it (no task, no timer). So a busy process makes one write and one read per round trip for all
  of its requests' admissions and settlements, whatever their number;
- a lazy call (a settlement: no request waits for it) waits up to the `linger_s` it was sent
  with for a call that is not lazy, and goes in its write (lazy calls gathered together go
  when the earliest of them is due). On this 2-core VM a write to Redis costs ~25 µs of system
  time, as much as the rest of a call: under load, settlements then cost no write of their
  own;
- a merged call (an admission) names what it shares with others (its API key and limits):
  those gathering under the same name go as one command, built when the batch is written, and
  its reply (a list) is handed back one element to each (admission.lua admits them in order).
  The command takes the place of the last of them, so whatever gathered before any of them (a
  settlement releasing a lease, refunding tokens) still runs before it.

Replies come back in the order the calls went, each to its own future; an error reply is its
own caller's exception (as redis-py raises it), never its batch's. A caller that stops waiting
(its deadline passed, it was cancelled) keeps its place: its reply is read and dropped. A batch
not answered within `dead_after_s` fails the connection (`fail`), as does its loss.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]
Build = Callable[[Hashable, list[Any]], Command]  # a merged command from its name and items


def _packed(command: Command) -> bytes:
    return bytes(hiredis.pack_command(command))


class _Merged:
    """Calls gathered under one name: one command, one reply (a list, one element each).
    Stands in the batch where a future would (done, set_result, set_exception)."""

    __slots__ = ("build", "futures", "items", "last", "name", "sent")

    def __init__(self, name: Hashable, build: Build) -> None:
        self.name = name
        self.build = build
        self.items: list[Any] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.sent: list[asyncio.Future[Any]] = []
        self.last = 0  # where its last call stands among the gathered ones: it goes there

    def done(self) -> bool:
        """Every caller stopped waiting (or was answered)."""
        return all(future.done() for future in self.futures)

    def packed(self) -> bytes:
        """The command of the calls whose callers still wait."""
        kept = [i for i, future in enumerate(self.futures) if not future.done()]
        self.sent = [self.futures[i] for i in kept]
        return _packed(self.build(self.name, [self.items[i] for i in kept]))

    def set_result(self, replies: Any) -> None:
        if not isinstance(replies, list) or len(replies) != len(self.sent):
            message = f"A merged command answered {replies!r} for {len(self.sent)} calls."
            self.set_exception(InvalidResponse(message))
            return
        for future, reply in zip(self.sent, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    def set_exception(self, error: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(error)


_Pending = asyncio.Future[Any] | _Merged


class Wire(asyncio.Protocol):
    """One connection: the replies it waits for, in order, and what gathers behind them."""

    def __init__(self, dead_after_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.dead_after_s = dead_after_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_error_reply)
        self.waiting: deque[_Pending] = deque()  # calls written, unanswered, in order
        self.gathered: list[bytes | _Merged] = []  # calls not written yet (packed), in order
        self.gathered_futures: list[_Pending] = []
        self.merging: dict[Hashable, _Merged] = {}  # the merged calls among the gathered ones
        self.urgent = False  # a call that is not lazy is among the gathered ones
        self.lingering: asyncio.TimerHandle | None = None  # lazy calls go when it fires
        self.due = math.inf  # when the earliest of the gathered lazy calls must go (loop time)
        self.sent_at = 0.0  # when the batch on the wire went
        self.watchdog: asyncio.TimerHandle | None = None
        self.lost: RedisError | None = None  # set once the connection is gone
        self.fresh = True  # no reply read yet: a failure now is not a stale connection's
        self.trips = 0  # batches written (for tests and benchmarks)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's class

    def data_received(self, data: bytes) -> None:
        self.fresh = False
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = self.reader.gets()
            if reply is False:  # the rest of it is still on its way
                return
            pending = waiting.popleft()
            if pending.done():  # its caller stopped waiting
                continue
            if isinstance(reply, RedisError):
                pending.set_exception(reply)
            else:
                pending.set_result(reply)
        if self.urgent:  # the batch on the wire is answered: the next one goes
            self._flush()
        elif self.gathered:
            self._linger()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            error = RedisConnectionError("Connection closed by server.")
            error.__cause__ = exc
            self.fail(error)

    # the calls

    def send(self, commands: list[Command], linger_s: float = 0.0) -> list[asyncio.Future[Any]]:
        """Futures of the commands' replies. `linger_s` > 0: nobody waits on them soon, so they
        may wait that long for a call that is not lazy, and go in its write."""
        if self.lost is not None:
            raise self.lost
        create = self.loop.create_future
        futures = [create() for _ in commands]
        self.gathered += [_packed(command) for command in commands]
        self.gathered_futures += futures
        if linger_s > 0:
            self.hasten(linger_s)
        else:
            self._urge()
        return futures

    def send_merged(
        self, name: Hashable, items: list[Any], build: Build
    ) -> list[asyncio.Future[Any]]:
        """The futures of `items`' elements of the reply to the command that `build` makes of
        every item gathered under `name` (in their order) when the batch is written."""
        if self.lost is not None:
            raise self.lost
        create = self.loop.create_future
        futures = [create() for _ in items]
        merged = self.merging.get(name)
        if merged is None:
            merged = self.merging[name] = _Merged(name, build)
        merged.last = len(self.gathered)  # each call holds a place; the last one is kept
        self.gathered.append(merged)
        self.gathered_futures.append(merged)
        merged.items += items
        merged.futures += futures
        self._urge()
        return futures

    def hasten(self, linger_s: float) -> None:
        """Lazy calls gathered now go within `linger_s` at the latest."""
        if self.gathered and not self.urgent:
            self.due = min(self.due, self.loop.time() + linger_s)
            if not self.waiting:
                self._linger()

    def _urge(self) -> None:
        """A call that is not lazy: written now, or as soon as the batch on the wire is read."""
        if self.waiting:
            self.urgent = True
        else:
            self._flush()

    def _linger(self) -> None:
        """Go when the earliest lazy call is due (sooner than the timer set, if it is)."""
        if self.lingering is not None:
            if self.lingering.when() <= self.due:
                return
            self.lingering.cancel()
        self.lingering = self.loop.call_at(self.due, self._lingered)

    def _lingered(self) -> None:
        self.lingering = None
        if self.waiting:
            self.urgent = True  # they go as soon as the batch on the wire is answered
        elif self.gathered:
            self._flush()

    def _flush(self) -> None:
        """Write what gathered, in one write; callers that stopped waiting are not sent."""
        gathered, futures = self.gathered, self.gathered_futures
        self.gathered, self.gathered_futures, self.urgent = [], [], False
        self.due = math.inf
        if self.merging:
            self.merging = {}
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None
        kept = [
            i
            for i, pending in enumerate(futures)
            if not pending.done() and (type(pending) is not _Merged or pending.last == i)
        ]
        if len(kept) < len(futures):
            gathered, futures = [gathered[i] for i in kept], [futures[i] for i in kept]
        if futures:
            self._write(
                [call.packed() if isinstance(call, _Merged) else call for call in gathered],
                futures,
            )

    def _write(self, packed: list[bytes], futures: list[_Pending]) -> None:
        assert self.transport is not None
        self.trips += 1
        self.waiting.extend(futures)
        self.transport.write(b"".join(packed))
        self.sent_at = self.loop.time()
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(self.sent_at + self.dead_after_s, self._check)

    def _check(self) -> None:
        """One timer per connection, re-armed only when it fires (not once per batch)."""
        self.watchdog = None
        if not self.waiting or self.lost is not None:
            return
        due = self.sent_at + self.dead_after_s
        if self.loop.time() < due:
            self.watchdog = self.loop.call_at(due, self._check)
            return
        self.fail(RedisTimeoutError(f"Redis did not answer within {self.dead_after_s:g} s."))

    def fail(self, error: RedisError) -> None:
        self.lost = error
        for timer in (self.watchdog, self.lingering):
            if timer is not None:
                timer.cancel()
        self.watchdog = self.lingering = None
        failed = [*self.waiting, *self.gathered_futures]
        self.waiting.clear()
        self.gathered, self.gathered_futures, self.merging = [], [], {}
        for pending in failed:
            if not pending.done():
                pending.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


def _error_reply(message: str) -> RedisError:
    """An error reply as the exception redis-py raises for it (NoScriptError, ...)."""
    error: RedisError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call, unused-ignore]
    return error
