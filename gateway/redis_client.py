"""The gateway's Redis client: a bounded pool whose connections pack commands in C and never
lose a cancel.

redis-py's asyncio connections pack every argument of every command in Python (its synchronous
ones use hiredis when it is installed). The ledger's settlement script takes ~20 arguments per
request, so packing was a visible share of a request's CPU; hiredis packs the same bytes.

With a socket timeout, redis-py sends each command through `asyncio.wait_for`, which on
Python 3.11 swallows a cancel that lands as the send completes (CPython gh-86296, fixed in
3.12): the cancelled task carries on as if nothing happened. Cancelled during Redis traffic,
most tasks were (180 of 300 in a loop of GETs), so a stopped trainer went on training and a
shutdown waited for a feed for ever. Our connections notice the swallowed cancel and raise it.

A reply's socket timeout does not count the time this process was too busy to read it (the
admission's Patience, gateway/limits/patience.py): on a loaded machine a reply Redis sent at
once sat unread past redis-py's deadline, and a file's GET was answered 503.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, DataError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.limits.failures import classify
from gateway.limits.patience import BUSY_FACTOR, Patience


def pack_command(*args: Any) -> list[bytes]:
    """One command in RESP, as redis-py's `pack_command` would produce it."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError as exc:  # what redis-py raises for an argument it cannot encode
        raise DataError(str(exc)) from exc


class _Packed:
    """hiredis packing, the cancel `asyncio.wait_for` swallowed raised again, and a read's
    deadline that waits out this process's own busy time (see above)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        task = asyncio.current_task()
        asked = 0 if task is None else task.cancelling()
        await super().send_packed_command(command, check_health)  # type: ignore[misc, unused-ignore]
        if task is not None and task.cancelling() > asked:  # cancelled, yet here: swallowed
            await self.disconnect(nowait=True)  # type: ignore[attr-defined, unused-ignore]  # (its answer unread)
            raise asyncio.CancelledError

    async def read_response(  # redis-py's signature, `timeout` included
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        read = super().read_response  # type: ignore[misc]
        socket_timeout: float | None = self.socket_timeout  # type: ignore[attr-defined]
        if timeout is not None or not socket_timeout:  # a caller's own timeout: redis-py's way
            return await read(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        try:
            async with Patience(socket_timeout, socket_timeout * BUSY_FACTOR):
                return await read(  # math.inf: no timeout of redis-py's own
                    disable_decoding,
                    math.inf,
                    disconnect_on_error=disconnect_on_error,
                    push_request=push_request,
                )
        except TimeoutError:  # (redis-py disconnected it when the read was cancelled)
            host = self._host_error()  # type: ignore[attr-defined]
            raise RedisTimeoutError(f"Timeout reading from {host}") from None


class PackedConnection(_Packed, Connection):
    pass


class PackedSSLConnection(_Packed, SSLConnection):
    pass


class PackedUnixConnection(_Packed, UnixDomainSocketConnection):
    pass


_PACKED: dict[type[Any], type[Any]] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixConnection,
}


def redis_client(
    url: str, timeout_s: float, max_connections: int, password: str | None = None
) -> Redis:
    """A bounded pool: beyond `max_connections` callers wait (up to the timeout) for a free one.
    `password`, if given, is used instead of the URL's (settings.redis_password), with the
    URL's user name. (Given to `from_url`, it lost: redis-py lets the URL's options win over
    its keywords, so a stale password in the URL was sent and the right one ignored.)

    A command that meets a broken connection (every pooled one is, after Redis restarts) is
    sent once more on a fresh one; timeouts are not retried (Redis is there, but slow).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )
    if password is not None:  # before any connection is made; RedisPipe copies these too
        pool.connection_kwargs["password"] = password
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes every connection


# What a call to Redis raises when Redis is away, slow or refusing: every caller that falls back
# (a queue, a stale record, a retry) catches these.
REDIS_FAILURES = (RedisError, OSError, TimeoutError)
# A write whose reply came late or was lost (it may have run): what Redis holds is read back
# every READ_BACK_EVERY_S until Redis answers, for READ_BACK_S at most.
READ_BACK_S = 5.0
READ_BACK_EVERY_S = 0.2
_T = TypeVar("_T")


async def read_back(read: Callable[[], Awaitable[_T]]) -> _T:
    """`read` once Redis answers (tried every READ_BACK_EVERY_S, for READ_BACK_S at most; its
    last failure raised then): what it holds says whether a write whose reply was lost ran."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_BACK_S
    while True:
        try:
            return await read()
        except REDIS_FAILURES:
            if loop.time() + READ_BACK_EVERY_S > deadline:
                raise
            await asyncio.sleep(READ_BACK_EVERY_S)


async def landed(exc: BaseException, holds: Callable[[], Awaitable[bool]]) -> bool:
    """Whether a write that raised `exc` ran all the same: its reply came late or was lost
    (classify: it may have run) and `holds`, read once Redis answers (read_back), says Redis
    holds what it wrote. False while Redis stays away: the caller's 503 stands."""
    if not classify(exc).may_have_run:
        return False
    try:
        return await read_back(holds)
    except REDIS_FAILURES:
        return False


NO_PASSWORD = (
    "Redis asks for a password, and none is configured "
    "(redis_password, LLMAAS_REDIS_PASSWORD, or in redis_url)"
)


def redis_error(exc: BaseException) -> str:
    """An error of Redis's for the log: its class, and Redis's own words where it answered
    ("OOM command not allowed when used memory > 'maxmemory'"): the class alone said
    `ResponseError`, and the log called a full Redis unreachable. A NOAUTH (a password
    needed and none sent) says which settings hold one first: Redis's words for it ("HELLO
    must be called with the client already authenticated, ..." to redis-py's RESP3
    greeting) name none of them."""
    text = str(exc).strip()
    if isinstance(exc, AuthenticationError) and getattr(exc, "status_code", None) == "NOAUTH":
        text = f"{NO_PASSWORD}: {text}"
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
