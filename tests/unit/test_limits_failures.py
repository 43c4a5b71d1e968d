"""What each way of failing to reach Redis means for an admission, from real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.limits.failures import Failure, classify
from gateway.netutil import free_port
from gateway.redis_client import redis_client

pytestmark = pytest.mark.asyncio(loop_scope="session")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def failure_of(client: Redis) -> Failure:
    with pytest.raises(RedisError) as info:
        await client.ping()
    await client.aclose()
    return classify(info.value)


@asynccontextmanager
async def fake_redis(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def test_no_free_connection_is_busy_and_nothing_was_sent(redis: Redis) -> None:
    where = redis.connection_pool.connection_kwargs
    client = redis_client(f"redis://{where['host']}:{where['port']}/0", 0.05, max_connections=1)
    async with client.pipeline() as watching:
        await watching.watch("anything")  # holds the pool's only connection until the end
        with pytest.raises(RedisError) as info:
            await client.ping()
    await client.aclose()
    failure = classify(info.value)
    assert failure == Failure("busy", may_have_run=False)
    assert failure.waits


async def test_connection_refused_is_unreachable_and_nothing_ran() -> None:
    failure = await failure_of(redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.5, 4))
    assert failure == Failure("unreachable", may_have_run=False)
    assert not failure.waits


async def test_no_reply_in_time_is_slow_and_may_have_run() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # takes commands, never answers, until the client leaves
            pass
        writer.close()

    async with fake_redis(silent) as url:
        failure = await failure_of(redis_client(url, 0.1, 4))
    assert failure == Failure("slow", may_have_run=True)
    assert failure.waits


async def test_a_connection_closed_after_the_command_is_unreachable_and_may_have_run() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    async with fake_redis(hang_up) as url:
        failure = await failure_of(redis_client(url, 0.5, 4))
    assert failure == Failure("unreachable", may_have_run=True)
    assert not failure.waits


async def test_an_error_reply_decides_at_once_and_nothing_ran(redis: Redis) -> None:
    with pytest.raises(RedisError) as info:
        await redis.eval("return redis.call('NO-SUCH-COMMAND')", 0)
    assert classify(info.value) == Failure("error", may_have_run=False)


async def test_the_admissions_own_deadline_is_slow() -> None:
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    assert classify(info.value) == Failure("slow", may_have_run=True)
