"""The client commands' transport says in plain words why a gateway gave no answer."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admin_client import AdminClient
from gateway.client_common import AdminError


async def test_a_gateway_that_never_answers_is_said_to_have_timed_out() -> None:
    """Found 2026-12-07: aiohttp's own text of a timeout is empty ("cannot reach the gateway
    at …/admin/v1: "). The commands wait 30 s (300 for a page of records); here 0.5."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # the request is taken, and never answered

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        with pytest.raises(AdminError) as silent:
            await AdminClient(url, "t").send("GET", "/keys", timeout_s=0.5)
        for writer in held:
            writer.close()
    assert str(silent.value) == (
        f"cannot reach the gateway at {url}: timed out: no answer within 0.5 s"
    )
