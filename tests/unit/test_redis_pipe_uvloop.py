"""RedisPipe on uvloop, the loop the gateway serves on (it tells a protocol of its transport a
moment after create_connection returns): the scenarios of tests/unit/test_redis_pipe.py that do
not need the session's Redis fixture, and the round-trip sharing against a Redis of their own."""

from __future__ import annotations

from pathlib import Path

import uvloop

from gateway.embedded.redis_server import running_redis
from gateway.redis_client import redis_client
from tests.unit import test_redis_pipe


def test_the_pipe_on_uvloop(tmp_path: Path) -> None:
    async def scenarios() -> None:
        async with running_redis(None) as url:
            redis = redis_client(url, timeout_s=5.0, max_connections=8)
            try:
                await (
                    test_redis_pipe.test_concurrent_calls_share_round_trips_and_each_gets_its_reply(
                        redis
                    )
                )
                await test_redis_pipe.test_a_caller_that_gave_up_before_its_call_went_is_not_sent(
                    redis
                )
                await test_redis_pipe.test_credentials_and_the_database_in_the_url_are_used(redis)
                # uvloop's timers: a lazy call's linger moved earlier
                await test_redis_pipe.test_lazy_calls_go_when_the_earliest_of_them_is_due(redis)
                await test_redis_pipe.test_hastened_lazy_calls_go_within_the_shorter_linger(redis)
            finally:
                await redis.aclose()
        await test_redis_pipe.test_a_refused_connection_is_unreachable_and_the_next_call_connects(
            tmp_path
        )
        await test_redis_pipe.test_a_connection_that_never_answers_is_dropped_after_dead_after_s()
        await test_redis_pipe.test_a_unix_socket_url_is_reached(tmp_path)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenarios())
    finally:
        loop.close()
