"""The gateway's Redis client: a bounded pool whose connections pack commands in C.

redis-py's asyncio connections pack every argument of every command in Python (its synchronous
ones use hiredis when it is installed). The ledger's settlement script takes ~20 arguments per
request, so packing was a visible share of a request's CPU; hiredis packs the same bytes.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError


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


class PackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)


class PackedSSLConnection(SSLConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)


class PackedUnixConnection(UnixDomainSocketConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_command(*args)


_PACKED: dict[type[Any], type[Any]] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixConnection,
}


def redis_client(
    url: str, timeout_s: float, max_connections: int, password: str | None = None
) -> Redis:
    """A bounded pool: beyond `max_connections` callers wait (up to the timeout) for a free one.
    `password`, if given, is used instead of the URL's (settings.redis_password).

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
        **({} if password is None else {"password": password}),
    )
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes every connection
