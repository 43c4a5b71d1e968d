"""The gateway's Redis connections pack commands with hiredis: the same bytes redis-py would
send, and the same error for what cannot be sent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.embedded.redis_server import running_redis
from gateway.redis_client import PackedConnection, PackedUnixConnection, redis_client

COMMANDS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("CONFIG GET", "maxmemory"),  # a two-word command is split, as redis-py does
    (b"CLIENT LIST",),
    ("EVALSHA", "0" * 40, 2, "llmaas:{t:a}:x", b"raw\x00bytes", 0, -17, 1.5, 1e-7, 12345678901234),
    ("SET", "clé", "värde ✓", "PX", 1000),
    ("XADD", "s", "*", "field", ""),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packed_bytes_are_redis_pys(args: tuple[Any, ...]) -> None:
    ours = b"".join(PackedConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_an_argument_redis_cannot_take_is_a_data_error() -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", {"not": "encodable"})


def test_every_url_scheme_gets_a_packing_connection() -> None:
    tcp = redis_client("redis://127.0.0.1:1/0", 1.0, 1)
    unix = redis_client("unix:///tmp/no-such.sock", 1.0, 1)
    assert tcp.connection_pool.connection_class is PackedConnection
    assert unix.connection_pool.connection_class is PackedUnixConnection
    assert issubclass(PackedUnixConnection, UnixDomainSocketConnection)


async def test_a_real_redis_understands_them() -> None:
    async with running_redis(None) as url:
        client: Redis = redis_client(url, 5.0, 4)
        try:
            await client.set("clé", "värde ✓")
            assert await client.get("clé") == "värde ✓".encode()
            await client.hset("h", mapping={"a": 1, "b": 2.5})
            assert await client.hgetall("h") == {b"a": b"1", b"b": b"2.5"}
            async with client.pipeline(transaction=False) as pipe:
                pipe.incrby("n", 3)
                pipe.incrby("n", 4)
                assert await pipe.execute() == [3, 7]
        finally:
            await client.aclose()


async def test_a_cancel_during_commands_is_never_lost() -> None:
    """Python 3.11's asyncio.wait_for, through which redis-py sends each command, swallowed a
    cancel landing as the send completed: 6 tasks in 10 went on running after cancel()."""
    async with running_redis(None) as url:
        client: Redis = redis_client(url, 5.0, 4)
        try:
            await client.set("k", "v")

            async def forever() -> None:
                while True:
                    assert await client.get("k") == b"v"

            still_running = 0
            for attempt in range(200):
                task = asyncio.create_task(forever())
                await asyncio.sleep(attempt % 7 * 0.0004)  # lands at every point of a command
                task.cancel()
                if not (await asyncio.wait({task}, timeout=1.0))[0]:
                    still_running += 1
                while not task.done():  # (so that a failing run ends)
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.01)
                assert task.cancelled()
            assert still_running == 0
            async with client.pipeline(transaction=False) as pipe:  # no answer left unread
                pipe.set("k2", "v2")
                pipe.get("k")
                assert await pipe.execute() == [True, b"v"]
        finally:
            await client.aclose()


async def test_a_reply_read_late_by_a_busy_process_is_no_timeout() -> None:
    """CI: a file's GET was answered 503 "store (Redis) could not be used" after 659 ms, the
    reply sitting unread while the loaded machine gave the gateway no CPU. A read's deadline
    does not count the time this process could not listen (limits.patience)."""
    async with running_redis(None) as url:
        client: Redis = redis_client(url, 0.2, 4)
        try:
            loop = asyncio.get_running_loop()
            # Redis answers after 0.1 s; the loop is stalled from 0.05 s to 0.65 s
            loop.call_later(0.05, time.sleep, 0.6)
            assert await client.blpop(["empty"], 0.1) is None
            async with client.pipeline(transaction=False) as pipe:
                loop.call_later(0.05, time.sleep, 0.6)
                pipe.blpop(["empty"], 0.1)
                assert await pipe.execute() == [None]
        finally:
            await client.aclose()


async def test_a_redis_that_does_not_answer_still_times_out() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # a command heard, never answered
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client: Redis = redis_client(f"redis://127.0.0.1:{port}/0", 0.2, 4)
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
            await client.get("k")
        assert time.monotonic() - started < 1.0  # its timeout, not the busy allowance (2 s)
    finally:
        await client.aclose()
        server.close()
        for writer in accepted:  # (a server's close leaves its accepted connections open)
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()
