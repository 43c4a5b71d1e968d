"""The engines' HTTP/1.1 client on uvloop, the loop the gateway serves on (its transports are
not asyncio's classes): the same keep-alive and streaming scenarios as tests/unit/test_h1.py."""

from __future__ import annotations

import uvloop

from tests.unit import test_h1


def test_keep_alive_and_streams_on_uvloop() -> None:
    async def scenarios() -> None:
        await test_h1.test_answers_are_read_and_connections_kept_alive()
        await test_h1.test_a_stream_arrives_chunk_by_chunk()
        await test_h1.test_a_kept_connection_closing_under_a_request_sends_it_on_a_new_one()
        await test_h1.test_a_reader_that_falls_behind_pauses_the_socket()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenarios())
    finally:
        loop.close()
