"""RedisPipe against real Redis servers: concurrent calls share round trips, each caller gets its
own reply or error, callers that give up never put replies out of step, and a connection that
is refused, restarted, dead or needs credentials behaves as redis-py's would."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, InvalidResponse, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.embedded.process_group import stop_process_group
from gateway.embedded.redis_server import redis_server_binary
from gateway.limits.failures import classify
from gateway.netutil import free_port
from gateway.redis_client import NO_PASSWORD, redis_client, redis_error
from gateway.redis_pipe import PipeScript, RedisPipe
from tests.support.redis_control import restartable_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Adds ARGV[2] to the counter KEYS[1]; refuses ARGV[1] == "bad" with an error reply.
SCRIPT = """
if ARGV[1] == "bad" then return redis.error_reply("bad call") end
return redis.call("INCRBY", KEYS[1], ARGV[2])
"""


def pipe_to(redis: Redis) -> RedisPipe:
    return RedisPipe(redis, dead_after_s=5.0)


async def test_concurrent_calls_share_round_trips_and_each_gets_its_reply(redis: Redis) -> None:
    pipe = pipe_to(redis)
    script = PipeScript(pipe, SCRIPT)
    keys = [f"pipe:{i}" for i in range(100)]
    await redis.delete(*keys)
    await script.load()
    before = pipe.trips
    replies = await asyncio.gather(*(script([k], ["ok", i + 1]) for i, k in enumerate(keys)))
    assert replies == list(range(1, 101))  # each caller its own key's reply, in its order
    assert [int(v or 0) for v in await redis.mget(keys)] == list(range(1, 101))
    assert pipe.trips - before == 2, pipe.trips - before  # the first alone, the 99 behind it
    before = pipe.trips
    assert await script(["pipe:alone"], ["ok", 5]) >= 5  # one alone goes straight out
    assert pipe.trips - before == 1
    written = pipe.trips
    await pipe.close()
    assert pipe.trips == written  # closing forgets no round trip
    assert await script(["pipe:alone"], ["ok", 1]) >= 6  # a call after close connects again
    assert pipe.trips == written + 1  # (the new connection's PING is no call's trip)
    await pipe.close()


async def test_lazy_calls_go_in_the_next_write_of_a_call_that_is_not_lazy(redis: Redis) -> None:
    pipe = RedisPipe(redis, dead_after_s=5.0)
    await pipe.call("PING")
    await redis.delete("lazy")
    before = pipe.trips
    lazy = [asyncio.ensure_future(pipe.calls([("INCR", "lazy")], linger_s=1.0)) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert pipe.trips == before  # waiting for company (up to linger_s)
    assert await redis.get("lazy") is None
    assert await pipe.call("GET", "lazy") == b"5"  # written after the five, in the same write
    assert pipe.trips == before + 1
    assert [await call for call in lazy] == [[1], [2], [3], [4], [5]]


async def test_lazy_calls_alone_go_after_linger_s(redis: Redis) -> None:
    pipe = RedisPipe(redis, dead_after_s=5.0)
    await pipe.call("PING")
    before = pipe.trips
    replies = await asyncio.gather(*(pipe.calls([("PING",)], linger_s=0.05) for _ in range(10)))
    assert replies == [[b"PONG"]] * 10
    assert pipe.trips == before + 1  # one write for the ten, when the linger ran out


async def patient_call(pipe: RedisPipe) -> tuple[int, asyncio.Future[list[Any]]]:
    """A lazy PING that may wait a minute, not written yet; the trips before it."""
    await pipe.call("PING")
    before = pipe.trips
    patient = asyncio.ensure_future(pipe.calls([("PING",)], linger_s=60.0))
    await asyncio.sleep(0.05)
    assert pipe.trips == before
    return before, patient


async def test_lazy_calls_go_when_the_earliest_of_them_is_due(redis: Redis) -> None:
    pipe = RedisPipe(redis, dead_after_s=5.0)
    before, patient = await patient_call(pipe)
    hurried = pipe.calls([("ECHO", "soon")], linger_s=0.05)
    assert await asyncio.wait_for(hurried, 10) == [b"soon"]
    assert await asyncio.wait_for(patient, 10) == [b"PONG"]  # in the same write
    assert pipe.trips == before + 1
    await pipe.close()


async def test_hastened_lazy_calls_go_within_the_shorter_linger(redis: Redis) -> None:
    pipe = RedisPipe(redis, dead_after_s=5.0)
    before, patient = await patient_call(pipe)
    pipe.hasten(0.01)
    assert await asyncio.wait_for(patient, 10) == [b"PONG"]
    assert pipe.trips == before + 1
    pipe.hasten(0.01)  # nothing gathered: nothing to write
    await asyncio.sleep(0.05)
    assert pipe.trips == before + 1
    await pipe.close()


async def test_an_error_reply_reaches_only_its_own_caller(redis: Redis) -> None:
    script = PipeScript(pipe_to(redis), SCRIPT)
    await redis.delete("errs")
    calls = [script(["errs"], ["bad" if i == 3 else "ok", 1]) for i in range(10)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ResponseError)
    assert "bad call" in str(results[3])
    assert sum(1 for r in results if isinstance(r, int)) == 9
    assert int(await redis.get("errs") or 0) == 9
    replies = await script.pipe.calls([("SET", "errs", "x"), ("INCR", "errs"), ("GET", "errs")])
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)  # in its place, the others answered
    assert replies[2] == b"x"


async def test_scripts_flushed_from_redis_are_loaded_again(redis: Redis) -> None:
    script = PipeScript(pipe_to(redis), SCRIPT)
    await redis.delete("flushed")
    await redis.script_flush()  # as after a Redis restart: NOSCRIPT for every call
    replies = await asyncio.gather(*(script(["flushed"], ["ok", 1]) for _ in range(20)))
    assert sorted(replies) == list(range(1, 21))


async def test_a_caller_that_gave_up_before_its_call_went_is_not_sent(redis: Redis) -> None:
    pipe = pipe_to(redis)
    await pipe.call("PING")  # connected: the next call goes straight out
    await redis.delete("kept", "dropped", "never-pushed")
    # The first call blocks in Redis for 0.2 s, so the calls behind it are still gathering
    # when one gives up (an INCR could be answered within a turn of the loop, and the gathered
    # calls would go before the cancellation).
    first = asyncio.ensure_future(pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    gave_up = asyncio.ensure_future(pipe.call("INCR", "dropped"))  # gathers behind it
    kept = asyncio.ensure_future(pipe.call("INCR", "kept"))
    await asyncio.sleep(0)
    gave_up.cancel()
    assert await first is None  # BLPOP's timeout
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    assert await redis.get("dropped") is None  # its call never reached Redis


async def test_a_caller_that_gave_up_after_its_call_went_leaves_the_replies_in_step(
    redis: Redis,
) -> None:
    pipe = pipe_to(redis)
    await pipe.call("PING")
    slow = asyncio.ensure_future(pipe.call("BLPOP", "never-pushed", 0.3))
    await asyncio.sleep(0.05)
    slow.cancel()  # its reply comes later and is dropped
    assert await pipe.call("ECHO", "mine") == b"mine"  # behind it: waits, then its own reply
    assert await pipe.call("ECHO", "next") == b"next"
    assert slow.cancelled()


async def test_a_refused_connection_is_unreachable_and_the_next_call_connects(
    tmp_path: Path,
) -> None:
    port = free_port()
    client = redis_client(f"redis://127.0.0.1:{port}/0", 1.0, 4)
    pipe = RedisPipe(client)
    with pytest.raises(RedisConnectionError) as refused:
        await pipe.call("PING")
    failure = classify(refused.value)
    assert (failure.kind, failure.may_have_run) == ("unreachable", False)
    async with _redis_server(tmp_path, port=port):
        assert await pipe.call("PING") == b"PONG"
    await pipe.close()
    await client.aclose()


async def test_a_restarted_redis_is_reached_again_without_a_failed_call(tmp_path: Path) -> None:
    async with restartable_redis(tmp_path) as server:
        client = redis_client(server.url, 1.0, 4)
        pipe = RedisPipe(client)
        assert await pipe.call("SET", "survives", "1") == b"OK"
        await server.stop()
        await server.start()
        # The old socket is dead; the call goes on a new one (sent again at most once).
        assert await pipe.call("GET", "survives") == b"1"
        await pipe.close()
        await client.aclose()


async def test_a_connection_that_never_answers_is_dropped_after_dead_after_s() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # reads nothing, answers nothing, never closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = redis_client(f"redis://127.0.0.1:{port}/0", 1.0, 4)
    pipe = RedisPipe(client, dead_after_s=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(pipe.call("PING"), 5.0)
        failure = classify(RedisTimeoutError())
        assert failure.kind == "slow"
        with pytest.raises(RedisTimeoutError):  # the next call is on a new connection
            await asyncio.wait_for(pipe.call("PING"), 5.0)
        assert len(connections) == 2
    finally:
        await pipe.close()
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()


async def test_credentials_and_the_database_in_the_url_are_used(redis: Redis) -> None:
    user, password = f"piper{secrets.token_hex(3)}", secrets.token_hex(8)
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all"],
    )
    kwargs = redis.connection_pool.connection_kwargs
    where = f"{kwargs['host']}:{kwargs['port']}"
    client = redis_client(f"redis://{user}:{password}@{where}/3", 1.0, 4)
    pipe = RedisPipe(client)
    assert await pipe.call("SET", "in-three", "yes") == b"OK"
    assert await client.get("in-three") == b"yes"  # redis-py, same URL: database 3
    assert await redis.get("in-three") is None  # not in database 0
    await pipe.close()
    await client.aclose()
    wrong = redis_client(f"redis://{user}:wrong@{where}/3", 1.0, 4)
    with pytest.raises(AuthenticationError):
        await RedisPipe(wrong).call("PING")
    await wrong.aclose()


async def test_a_unix_socket_url_is_reached(tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    async with _redis_server(tmp_path, unix=socket):
        client = redis_client(f"unix://{socket}?db=2", 1.0, 4)
        pipe = RedisPipe(client)
        assert await pipe.call("SET", "over-unix", "1") == b"OK"
        assert await client.get("over-unix") == b"1"
        await pipe.close()
        await client.aclose()


async def test_a_redis_asking_for_a_password_none_gives_is_named_noauth(tmp_path: Path) -> None:
    """Found by review: a Redis whose password was set after the gateway connected without
    one answered the pipe's next connection's first script call with a protocol error
    ("unauthenticated multibulk length"), all the log said. The connection's PING now
    raises Redis's NOAUTH as an AuthenticationError, logged with the settings to look at."""
    port = free_port()
    async with _redis_server(tmp_path, port=port, password=secrets.token_hex(8)):
        client = redis_client(f"redis://127.0.0.1:{port}/0", 1.0, 4)
        pipe = RedisPipe(client)
        script = PipeScript(pipe, SCRIPT)
        with pytest.raises(AuthenticationError) as refused:
            await script([f"k{i}" for i in range(20)], ["ok", 1])  # many arguments
        assert redis_error(refused.value) == (
            f"AuthenticationError: {NO_PASSWORD}: Authentication required."
        )
        assert classify(refused.value).kind == "error"
        await pipe.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def _redis_server(
    workdir: Path, *, port: int = 0, unix: Path | None = None, password: str | None = None
) -> AsyncIterator[None]:
    args = [str(redis_server_binary()), "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--bind", "127.0.0.1"]
    if password is not None:
        args += ["--requirepass", password]
    if unix is not None:
        args += ["--unixsocket", str(unix)]
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(200):
            if await _answers(port, unix):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield
    finally:
        await stop_process_group(process, grace_s=5.0)


async def _answers(port: int, unix: Path | None) -> bool:
    try:
        if unix is not None:
            _, writer = await asyncio.open_unix_connection(unix)
        else:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


# Adds each ARGV to KEYS[1], in order, and counts its calls in KEYS[2]; refuses "bad".
MERGED = """
redis.call("INCR", KEYS[2])
local out = {}
for i, by in ipairs(ARGV) do
  if by == "bad" then return redis.error_reply("bad merged call") end
  out[i] = redis.call("INCRBY", KEYS[1], by)
end
return out
"""


def merged_command(name: object, items: list[object]) -> tuple[object, ...]:
    return ("EVAL", MERGED, 2, name, f"{name}:calls", *items)


async def test_merged_calls_gathered_under_one_name_go_as_one_command(redis: Redis) -> None:
    pipe = pipe_to(redis)
    await pipe.call("PING")
    await redis.delete("m:a", "m:a:calls", "m:b", "m:b:calls", "m:c", "m:c:calls")
    on_the_wire = asyncio.ensure_future(pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    items = [("m:a", 1), ("m:b", 10), ("m:a", 2), ("m:c", "bad"), ("m:a", 4), ("m:b", 20)]
    calls = [asyncio.ensure_future(pipe.merged(name, by, merged_command)) for name, by in items]
    gave_up = asyncio.ensure_future(pipe.merged("m:a", 100, merged_command))
    await asyncio.sleep(0)
    gave_up.cancel()
    before = pipe.trips
    assert await on_the_wire is None
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:3] + results[4:] == [1, 10, 3, 7, 30]  # each caller its own element
    assert isinstance(results[3], ResponseError)
    assert "bad merged call" in str(results[3])
    assert pipe.trips == before + 1  # everything gathered went in one write
    calls_made = await redis.mget("m:a:calls", "m:b:calls", "m:c:calls")
    assert calls_made == [b"1", b"1", b"1"]  # one command per name
    assert await redis.get("m:a") == b"7"  # the caller that gave up was not sent
    assert await pipe.merged("m:a", 1, merged_command) == 8  # alone: straight out
    assert pipe.trips == before + 2


async def test_a_merged_command_goes_where_the_last_of_its_calls_stands(redis: Redis) -> None:
    """What gathered before any of the merged calls (a settlement releasing a lease) runs
    before their command; what gathered after all of them runs after."""
    pipe = pipe_to(redis)
    await pipe.call("PING")
    await redis.delete("m:d", "m:d:calls")
    on_the_wire = asyncio.ensure_future(pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    first = asyncio.ensure_future(pipe.merged("m:d", 1, merged_command))
    between = asyncio.ensure_future(pipe.call("SET", "m:d", 100))
    second = asyncio.ensure_future(pipe.merged("m:d", 2, merged_command))
    after = asyncio.ensure_future(pipe.call("GET", "m:d"))
    assert await on_the_wire is None
    assert [await first, await between, await second, await after] == [101, b"OK", 103, b"103"]


async def test_a_merged_reply_of_the_wrong_shape_fails_each_caller(redis: Redis) -> None:
    """A merged command must answer one element per call; otherwise every caller gets an
    error (none is left waiting) and the connection goes on."""
    pipe = pipe_to(redis)

    def short(name: object, items: list[object]) -> tuple[object, ...]:
        return ("EVAL", "return {1}", 0)

    await pipe.call("PING")
    on_the_wire = asyncio.ensure_future(pipe.call("BLPOP", "never-pushed", 0.2))
    await asyncio.sleep(0)
    calls = [pipe.merged("m:short", i, short) for i in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert await on_the_wire is None
    assert all(isinstance(r, InvalidResponse) for r in results), results
    assert await pipe.call("ECHO", "still") == b"still"


class _TimingOut(RedisPipe):
    """A pipe whose every connect times out at once (a Redis too slow to accept)."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self.connects = 0

    async def _connect(self) -> Any:
        self.connects += 1
        raise RedisTimeoutError("Timeout connecting to Redis.")


async def test_a_call_right_after_a_failed_connect_connects_again_instead_of_spinning() -> None:
    # A caller scheduled just after a connect failed, before its done callback ran, was handed
    # the old failure without yielding; admission retries a "slow" connect, so a worker spun on
    # it at full CPU and never served again (seen under a 600-request burst).
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", 1.0, 4)
    pipe = _TimingOut(client)
    first = asyncio.ensure_future(pipe.call("PING"))
    await asyncio.sleep(0)  # `first` started the connect; the connect runs next
    calls = 0

    async def retrying() -> None:  # as AdmissionControl._ask on a "slow" failure
        nonlocal calls
        while calls < 3:
            calls += 1
            with contextlib.suppress(RedisTimeoutError):
                await pipe.call("PING")

    after = asyncio.ensure_future(retrying())  # runs right after the connect failed
    with pytest.raises(RedisTimeoutError):
        await first
    await after
    assert pipe.connects == 4  # each retry connected again; none got the old failure at once
    await pipe.close()
    await client.aclose()
