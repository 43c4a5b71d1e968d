"""Cut: a request's task is cancelled once when its client leaves or stops reading, and the
cancellation is told apart from a shutdown's."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.proxy.cut import Cut
from gateway.proxy.outcome import Outcome

pytestmark = pytest.mark.asyncio(loop_scope="session")
Seen = tuple[Outcome | None, bool, int]  # the cut's outcome, taken back, task.cancelling()


async def serve(how: str, also_shutdown: bool = False) -> Seen:
    """A request that waits forever, cut `how` ("client" or "deadline") while it waits."""
    cuts: list[Cut] = []
    seen: list[Seen] = []

    async def request() -> None:
        task = asyncio.current_task()
        assert task is not None
        cut = Cut(task)
        cuts.append(cut)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            taken = cut.take_back()
            cut.close()
            seen.append((cut.outcome, taken, task.cancelling()))
            if not taken:
                raise

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    cut = cuts[0]
    if how == "client":
        cut.client_left()
        cut.client_left()  # reported twice: cut once
    else:
        assert cut.cancel()
        assert not cut.cancel()  # already cut
    if also_shutdown:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return seen[0]


async def test_a_client_that_left_cuts_the_request_once() -> None:
    assert await serve("client") == (Outcome.CLIENT_DISCONNECTED, True, 0)


async def test_a_client_that_stopped_reading_is_cut_as_slow() -> None:
    assert await serve("deadline") == (Outcome.SLOW_CLIENT, True, 0)


async def test_a_shutdown_beside_a_cut_is_not_taken_back() -> None:
    outcome, taken, cancelling = await serve("client", also_shutdown=True)
    assert outcome == Outcome.CLIENT_DISCONNECTED
    assert not taken
    assert cancelling == 1


async def test_a_cut_the_work_swallowed_is_taken_back_and_nothing_is_cut_once_closed() -> None:
    cuts: list[Cut] = []

    async def swallowing() -> int:
        task = asyncio.current_task()
        assert task is not None
        cut = Cut(task)
        cuts.append(cut)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        cut.close()
        assert not cut.cancel()  # closed: nothing is cut any more
        await asyncio.sleep(0)  # and the task is not left cancelled
        return task.cancelling()

    task = asyncio.ensure_future(swallowing())
    await asyncio.sleep(0)
    assert cuts[0].cancel()
    assert await task == 0
