"""A client that stops reading a stream is cut after the write deadline: the engine request is
aborted, the concurrency lease released and what was sent billed, as for a disconnect."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import MODEL
from tests.integration.lease_fixture import LeaseStack, lease_stack  # noqa: F401 (the fixture)
from tests.integration.sim_fixture import wait_running
from tests.support.raw_http import leases_held, post_request, read_until_closed

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello there"}]
CHOICES, TOKENS = 8, 20_000  # far more than any socket buffer holds


async def test_a_client_that_stops_reading_is_cut_and_its_engine_request_aborted(
    leases: LeaseStack,
) -> None:
    key = await leases.new_key("slow", max_concurrency=1)
    body = {
        "model": MODEL,
        "messages": HELLO,
        "stream": True,
        "n": CHOICES,
        "max_tokens": TOKENS,
        "sim": {"itl_ms": 1},
    }
    head, payload = post_request("/v1/chat/completions", body, f"Bearer {key}")
    url = urlsplit(leases.gateway)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (url.hostname, url.port))
        await loop.sock_sendall(sock, head + payload)  # and never reads a byte
        await wait_running(leases.http, leases.sim, 1, deadline_s=15)
        await wait_running(leases.http, leases.sim, 0, deadline_s=60)  # cut, engine aborted
        async with asyncio.timeout(15):
            while not (records := await leases.records("slow")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        state = await leases.sim_state()
        held = await leases_held(leases.redis)
        # Its connection is dropped with what was queued for it: a graceful close waited for
        # it to read megabytes it never would, the socket kept as long as the client kept it.
        received = await read_until_closed(sock)
    finally:
        sock.close()
    assert received < 1 << 20, received  # the window's worth, not the queued answer
    [record] = records
    generated = state["generation_tokens_total"]
    print(f"cut: {record.completion_tokens} tokens billed, {generated} generated, lease {held}")
    assert (record.outcome, record.status, record.stream) == ("slow_client", 499, True)
    assert 0 < record.completion_tokens < CHOICES * TOKENS  # billed what was generated
    assert 0 < generated < CHOICES * TOKENS  # stopped, not finished
    assert set(held.values()) <= {0}, held
    async with leases.client(key) as oai:  # its one concurrency slot is free again
        done = await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert done.choices[0].finish_reason == "length"
