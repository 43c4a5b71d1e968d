"""The request path's Redis connection: one socket, calls pipelined, replies parsed by hiredis.

A request makes two Redis calls: its admission (before the engine) and its settlement (after
the answer, not awaited). Through redis-py each costs a pool checkout, a write, and a
StreamReader whose reply wakes a task: ~107 µs of CPU per command on a 2-core VM, against ~48
µs for a bare protocol. Here every such call goes out on one connection, batched as
gateway/redis_wire.py describes (concurrent calls share writes and reads; settlements linger
for an admission's write; one key's admissions merge into one command).

Failures: a connection refused, closed or reset fails every call on it and gathering behind it
with redis-py's ConnectionError (the OS error as its cause), and the next call connects again.
A batch not answered within `dead_after_s` (a socket that died without a reset) aborts the
connection the same way, with redis-py's TimeoutError. Callers that want a shorter deadline set
their own (admission's Patience, the settler's write timeout): a late reply is then simply
dropped, and the connection kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Hashable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_wire import Build, Command, Wire

DEAD_AFTER_TIMEOUTS = 10  # a batch unanswered this many socket timeouts: the socket is dead


class RedisPipe:
    """The pipelined connection to the Redis a redis-py client talks to (same address,
    credentials, database and TLS settings); connected at its first call."""

    def __init__(self, redis: Redis, dead_after_s: float | None = None) -> None:
        """`dead_after_s`: default, 10 times the client's socket timeout."""
        pool = redis.connection_pool
        self.kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.connection_class: type[Any] = pool.connection_class
        timeout_s = float(self.kwargs.get("socket_timeout") or 5.0)
        self.connect_timeout_s = float(self.kwargs.get("socket_connect_timeout") or timeout_s)
        self.dead_after_s = dead_after_s or DEAD_AFTER_TIMEOUTS * timeout_s
        self.wire: Wire | None = None
        self.connecting: asyncio.Future[Wire] | None = None
        self.earlier_trips = 0  # batches written over connections now closed

    @property
    def trips(self) -> int:
        """Batches written so far (one write, one round trip each): for tests and benchmarks."""
        return self.earlier_trips + (self.wire.trips if self.wire is not None else 0)

    async def call(self, *command: Any) -> Any:
        """One command's reply; an error reply raised as redis-py raises it."""
        (reply,) = await self.calls([command], raise_errors=True)
        return reply

    async def calls(
        self, commands: list[Command], *, raise_errors: bool = False, linger_s: float = 0.0
    ) -> list[Any]:
        """Several commands in one batch; error replies are returned in their places (or the
        first raised). `linger_s` > 0: the commands may wait that long for a call that is not
        lazy and go in its write (settlements, which nobody awaits, ride with admissions).

        Every command sent here must be safe to run twice: one that meets a connection which
        broke before its reply (Redis restarted since the last call) is sent once more on a
        fresh connection, as redis-py does."""
        wire = await self._wire()
        try:
            return await _replies(wire, wire.send(commands, linger_s), raise_errors)
        except RedisConnectionError as exc:
            if wire.lost is not exc or wire.fresh:
                raise
        wire = await self._wire()
        return await _replies(wire, wire.send(commands, linger_s), raise_errors)

    def hasten(self, linger_s: float) -> None:
        """Lazy calls gathered now go within `linger_s` at the latest."""
        if self.wire is not None:
            self.wire.hasten(linger_s)

    async def merged(self, name: Hashable, item: Any, build: Build) -> Any:
        """`item`'s element of the reply to one command made of every item gathered under
        `name` while the batch before it is on the wire (`build(name, items)`, their order);
        an error reply (the whole command's) raised as redis-py raises it. The command must
        be safe to run twice (see `calls`)."""
        (reply,) = await self.merged_all(name, [item], build)
        return reply

    async def merged_all(self, name: Hashable, items: list[Any], build: Build) -> list[Any]:
        """As `merged`, for several items gathered at once (in their order): their elements."""
        wire = await self._wire()
        try:
            return await _all(wire.send_merged(name, items, build))
        except RedisConnectionError as exc:
            if wire.lost is not exc or wire.fresh:
                raise
        wire = await self._wire()
        return await _all(wire.send_merged(name, items, build))

    async def close(self) -> None:
        wire, self.wire = self.wire, None
        if wire is not None:
            self.earlier_trips += wire.trips  # still counted once the connection is gone
            if wire.lost is None:
                wire.fail(RedisConnectionError("The connection was closed by the gateway."))

    async def _wire(self) -> Wire:
        wire = self.wire
        if wire is not None and wire.lost is None:
            return wire
        # A connect already done (its callback not run yet: a caller scheduled right after it
        # failed) is not awaited again: awaiting a done future never yields, so a caller that
        # retries (admission on a "slow" connect) spun on its old failure and froze the loop.
        if self.connecting is None or self.connecting.done():
            self.connecting = asyncio.ensure_future(self._connect())
            self.connecting.add_done_callback(self._connected)
        return await asyncio.shield(self.connecting)  # a caller giving up leaves it to others

    def _connected(self, done: asyncio.Future[Wire]) -> None:
        if self.connecting is done:
            self.connecting = None
        if not done.cancelled():
            done.exception()  # its callers have it (or none waits any more)

    async def _connect(self) -> Wire:
        if self.wire is not None:
            self.earlier_trips += self.wire.trips
            self.wire = None
        loop = asyncio.get_running_loop()
        kwargs = self.kwargs
        wire = Wire(self.dead_after_s)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if issubclass(self.connection_class, UnixDomainSocketConnection):
                    transport, _ = await loop.create_unix_connection(lambda: wire, kwargs["path"])
                else:
                    ssl = None
                    if issubclass(self.connection_class, SSLConnection):
                        ssl = self.connection_class(**kwargs).ssl_context.get()
                    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
                    transport, _ = await loop.create_connection(lambda: wire, host, port, ssl=ssl)
                wire.transport = transport  # uvloop may tell connection_made a moment later
                await self._hello(wire)
                wire.trips = 0  # the calls' trips: the setup's are no call's
        except BaseException as exc:
            if wire.lost is None:
                wire.fail(RedisConnectionError("The connection failed while being set up."))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError("Timeout connecting to Redis.") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
            raise
        self.wire = wire
        weakref.finalize(self, _dropped, wire)  # a pipe dropped unclosed closes its socket
        return wire

    async def _hello(self, wire: Wire) -> None:
        """AUTH and SELECT, as the URL asks; an error reply (a wrong password) is raised.
        Without a password, a PING: a Redis that asks for one answers NOAUTH, raised as
        AuthenticationError in Redis's words, which redis_error() logs with the settings
        that hold a password (the first call's own error was a protocol error,
        "unauthenticated multibulk length", for a script call's many arguments)."""
        commands: list[Command] = []
        password, username = self.kwargs.get("password"), self.kwargs.get("username")
        if password:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        else:
            commands.append(("PING",))
        db = int(self.kwargs.get("db") or 0)
        if db:
            commands.append(("SELECT", db))
        for future in wire.send(commands):
            await future


class PipeScript:
    """A Lua script called by its sha over the pipe, loaded again when Redis lost it."""

    def __init__(self, pipe: RedisPipe, script: str) -> None:
        self.pipe = pipe
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    def command(self, keys: list[str], args: list[Any]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.pipe.call(*self.command(keys, args))
        except NoScriptError:  # Redis restarted or flushed its scripts
            await self.load()
            return await self.pipe.call(*self.command(keys, args))

    async def merged_all(self, name: Hashable, items: list[Any], build: Build) -> list[Any]:
        """As `RedisPipe.merged_all` (`build` makes this script's EVALSHA, by `command`), loaded
        again when Redis lost it."""
        try:
            return await self.pipe.merged_all(name, items, build)
        except NoScriptError:  # Redis restarted or flushed its scripts
            await self.load()
            return await self.pipe.merged_all(name, items, build)

    async def load(self) -> None:
        await self.pipe.call("SCRIPT", "LOAD", self.script)


async def _all(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The futures' results (one reply answers them all at once). A caller that stops waiting
    stops waiting for all of them (those not written yet are not sent), and an error is
    raised once, not also logged as never retrieved."""
    try:
        return [await future for future in futures]
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()


def _dropped(wire: Wire) -> None:
    if wire.lost is None and not wire.loop.is_closed():
        wire.fail(RedisConnectionError("The connection's pipe was dropped."))


async def _replies(wire: Wire, futures: list[asyncio.Future[Any]], raise_errors: bool) -> list[Any]:
    results: list[Any] = []
    try:
        for future in futures:
            try:
                results.append(await future)
            except RedisError as exc:
                if raise_errors or wire.lost is exc:  # the connection, not the command, failed
                    raise
                results.append(exc)
    except BaseException:
        for future in futures:  # nobody reads the rest: their errors are not "never retrieved"
            future.add_done_callback(_retrieve)
        raise
    return results


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
