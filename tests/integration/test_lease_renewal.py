"""A stream longer than the lease ttl keeps its concurrency slot (renewed every ttl/3), and
gives it back when it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL
from tests.integration.lease_fixture import LEASE_TTL_S, LeaseStack, lease_stack  # noqa: F401
from tests.support.raw_http import leases_held

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello there"}]
TOKENS, ITL_MS = 60, 100  # a stream of 6 s: four lease ttls


async def test_a_stream_longer_than_the_lease_ttl_keeps_its_slot(leases: LeaseStack) -> None:
    key = await leases.new_key("renew", max_concurrency=1)
    renewed_before = leases.renewals.renewed
    async with leases.client(key) as oai:
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            max_tokens=TOKENS,
            extra_body={"sim": {"itl_ms": ITL_MS}},
        )

        async def read() -> list[str | None]:
            return [c.choices[0].finish_reason async for c in stream if c.choices]

        reading = asyncio.create_task(read())
        await asyncio.sleep(2 * LEASE_TTL_S)  # unrenewed, the lease would have expired
        assert not reading.done()
        with pytest.raises(openai.RateLimitError) as refused:
            await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
        finishes = await asyncio.wait_for(reading, 60)
        assert finishes[-1] == "length"  # read to the end, never cut by the write deadline
        assert "in flight" in refused.value.message
        async with asyncio.timeout(10):  # settled: the slot is given back
            while any((await leases_held(leases.redis)).values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        done = await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert done.choices[0].finish_reason == "length"
    assert leases.renewals.renewed > renewed_before
    assert not leases.renewals.live  # nothing left to renew once settled
