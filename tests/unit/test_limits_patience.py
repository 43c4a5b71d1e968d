"""The admission deadline: Redis's slowness counts, this process's own busy time does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import pytest

from gateway.limits.patience import Patience

pytestmark = pytest.mark.asyncio(loop_scope="session")


@contextmanager
def busy_loop(every_s: float, blocked_s: float) -> Iterator[None]:
    """The event loop blocked for `blocked_s` every `every_s` (0: every round), as by a crowd."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def block() -> None:
        nonlocal handle
        time.sleep(blocked_s)
        handle = loop.call_later(every_s, block)

    handle = loop.call_later(every_s, block)
    try:
        yield
    finally:
        handle.cancel()


async def reply_read_after_a_stall(deadline: AbstractAsyncContextManager[object]) -> str:
    """Redis answers after 50 ms, but the loop is busy from 10 ms to 310 ms."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.05, reply.set_result, "admitted")
    loop.call_later(0.01, time.sleep, 0.3)
    async with deadline:
        return await reply


async def test_a_reply_that_waited_for_a_busy_loop_is_not_a_timeout() -> None:
    assert await reply_read_after_a_stall(Patience(0.1, 1.0)) == "admitted"
    with pytest.raises(TimeoutError):  # what a plain timeout makes of the same stall
        await reply_read_after_a_stall(asyncio.timeout(0.1))


async def test_no_reply_while_the_loop_keeps_up_ends_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Patience(0.1, 1.0):
            await asyncio.sleep(10)
    assert 0.1 <= time.monotonic() - started < 0.3


async def test_a_loop_that_never_calms_down_waits_at_most_the_whole_bound() -> None:
    started = time.monotonic()
    with busy_loop(every_s=0, blocked_s=0.02), pytest.raises(TimeoutError):
        async with Patience(0.05, 0.4):
            await asyncio.sleep(10)
    assert 0.4 <= time.monotonic() - started < 0.7


async def test_a_timeout_leaves_its_task_uncancelled() -> None:
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError):
        async with Patience(0.05, 0.5):
            await asyncio.sleep(10)
    assert task.cancelling() == 0  # the deadline withdrew its own cancel request
    await asyncio.sleep(0)  # and nothing is left to cancel this task later


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    """A client that left cancels the admission: that propagates as CancelledError, before the
    deadline and also when it comes at the same time as the deadline."""

    async def admit(deadline_s: float) -> None:
        async with Patience(deadline_s, 1.0):
            await asyncio.sleep(10)

    early = asyncio.create_task(admit(5.0))
    await asyncio.sleep(0.02)
    early.cancel()
    with pytest.raises(asyncio.CancelledError):
        await early

    both = asyncio.create_task(admit(0.05))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.05)
    loop.call_soon(both.cancel)  # lands in the same rounds as the deadline's own cancel
    with pytest.raises(asyncio.CancelledError):
        await both
