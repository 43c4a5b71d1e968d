"""Upstream.open against a real socket server: what it counts is given back on every path."""

from __future__ import annotations

import asyncio

import pytest

from gateway.metrics import Metrics
from gateway.proxy.upstream import Upstream
from gateway.routing.engines import Engine
from gateway.settings import UpstreamSettings
from tests.unit.test_h1 import Server, read_request, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_caller_cancelled_while_a_404_is_read_gives_back_its_counts() -> None:
    """A 404 is read whole while another engine is left to try (it may say the engine lost
    the model): a client that leaves meanwhile leaves no engine slot, no replica slot and no
    connection behind (they were held for good, and enough of them made every request a 503)."""

    async def slow_404(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 60\r\n\r\n{")  # the rest later
        await writer.drain()
        await reader.read()  # until the gateway closes
        server.closed_by_client.set()

    async with serving(slow_404) as server:
        upstream = Upstream(UpstreamSettings(), Metrics())
        first, second = Engine(server.url), Engine(server.url + "/")
        task = asyncio.create_task(
            upstream.open([first, second], "/v1/chat/completions", b"{}", {}, False)
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        assert (first.inflight, second.inflight, upstream.open_requests) == (0, 0, 0)
        await upstream.close()
