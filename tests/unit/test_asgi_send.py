"""WriteDeadline: a send the client does not take in time cancels the work; a stream that keeps
flowing is never cut, however long it lasts in all."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from gateway.proxy.asgi_send import WriteDeadline

pytestmark = pytest.mark.asyncio(loop_scope="session")
BODY: Message = {"type": "http.response.body", "body": b"x", "more_body": True}


async def test_a_send_not_taken_in_time_cancels_the_work() -> None:
    taken = asyncio.Event()  # never set: a client that stopped reading

    async def stuck(message: Message) -> None:
        await taken.wait()

    deadline = WriteDeadline(stuck, timeout_s=0.05)

    async def work() -> None:
        await deadline(BODY)

    deadline.task = task = asyncio.ensure_future(work())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert deadline.expired


async def test_a_stream_that_keeps_flowing_is_never_cut() -> None:
    sent: list[Message] = []

    async def slow_but_steady(message: Message) -> None:
        await asyncio.sleep(0.01)
        sent.append(message)

    deadline = WriteDeadline(slow_but_steady, timeout_s=0.5)

    async def work() -> None:
        for _ in range(80):  # 0.8 s in all, longer than the deadline
            await deadline(BODY)
        await asyncio.sleep(0.6)  # idle: nothing is being sent, nothing to cut
        await deadline(BODY)

    deadline.task = task = asyncio.ensure_future(work())
    await asyncio.wait_for(task, 30)
    deadline.close()
    assert len(sent) == 81
    assert not deadline.expired
