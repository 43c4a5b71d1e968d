"""ScriptBatches against a real Redis: concurrent calls share round trips, and each caller
gets its own reply or error, as if it had called alone."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.redis_batch import ScriptBatches

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Adds ARGV[2] to the counter KEYS[1]; refuses ARGV[1] == "bad" with an error reply.
SCRIPT = """
if ARGV[1] == "bad" then return redis.error_reply("bad call") end
return redis.call("INCRBY", KEYS[1], ARGV[2])
"""


async def test_concurrent_calls_share_round_trips_and_each_gets_its_reply(redis: Redis) -> None:
    batches = ScriptBatches(redis, SCRIPT)
    keys = [f"batch:{i}" for i in range(100)]
    await redis.delete(*keys)
    replies = await asyncio.gather(*(batches([k], ["ok", i + 1]) for i, k in enumerate(keys)))
    assert replies == list(range(1, 101))  # each caller its own key's reply, in its order
    assert [int(v or 0) for v in await redis.mget(keys)] == list(range(1, 101))
    assert batches.trips < 20, batches.trips  # 100 calls, a handful of pipelines
    assert await batches(["batch:alone"], ["ok", 5]) >= 5  # then one alone goes straight out
    assert batches.writer is None
    assert batches.on_wire == 0
    assert not batches.gathering


async def test_an_error_reply_reaches_only_its_own_caller(redis: Redis) -> None:
    batches = ScriptBatches(redis, SCRIPT)
    await redis.delete("errs")
    calls = [batches(["errs"], ["bad" if i == 3 else "ok", 1]) for i in range(10)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ResponseError)
    assert "bad call" in str(results[3])
    assert sum(1 for r in results if isinstance(r, int)) == 9
    assert int(await redis.get("errs") or 0) == 9


async def test_scripts_flushed_from_redis_are_loaded_again(redis: Redis) -> None:
    batches = ScriptBatches(redis, SCRIPT)
    await redis.delete("flushed")
    await redis.script_flush()  # as after a Redis restart: NOSCRIPT for every call
    replies = await asyncio.gather(*(batches(["flushed"], ["ok", 1]) for _ in range(20)))
    assert sorted(replies) == list(range(1, 21))


async def test_a_caller_that_gave_up_before_its_call_went_is_not_sent(redis: Redis) -> None:
    batches = ScriptBatches(redis, SCRIPT)
    await redis.delete("kept", "dropped")
    first = asyncio.ensure_future(batches(["kept"], ["ok", 1]))  # goes straight out
    await asyncio.sleep(0)
    gave_up = asyncio.ensure_future(batches(["dropped"], ["ok", 1]))  # gathers behind it
    kept = asyncio.ensure_future(batches(["kept"], ["ok", 1]))
    await asyncio.sleep(0)
    gave_up.cancel()
    assert await first == 1
    assert await kept == 2
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    assert await redis.get("dropped") is None  # its call never reached Redis
