"""Departure: a request hears that its client left, from its connection's link under the
gateway's protocol, else from a task waiting on `receive`; never once its work is over."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Scope

from gateway.client_link import CLIENT_LINK, ClientLink
from gateway.proxy.departure import Departure

pytestmark = pytest.mark.asyncio(loop_scope="session")


def linked(link: ClientLink) -> Scope:
    return {"type": "http", "extensions": {CLIENT_LINK: {"link": link}}}


class Receiver:
    """An ASGI `receive` that answers `http.disconnect` once `leave` is called."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.calls = 0

    def leave(self) -> None:
        self.left.set()

    async def __call__(self) -> Message:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_the_link_tells_a_request_its_client_left_and_no_task_waits() -> None:
    link, heard, receive = ClientLink(), [], Receiver()
    departure = Departure(linked(link), receive, lambda: heard.append("left"))
    assert not await departure.gone()
    link.lost()
    assert heard == ["left"]
    departure.close()
    assert receive.calls == 0  # the link alone: `receive` was never asked


async def test_a_link_already_lost_says_gone_and_a_closed_departure_hears_nothing() -> None:
    link, heard = ClientLink(), []
    link.lost()
    departure = Departure(linked(link), Receiver(), lambda: heard.append("left"))
    assert await departure.gone()
    departure.close()
    other = ClientLink()
    done = Departure(linked(other), Receiver(), lambda: heard.append("after"))
    done.close()
    other.lost()
    assert heard == []  # gone before: told by `gone`; after `close`: not told


async def test_without_a_link_a_task_waits_on_receive() -> None:
    heard: list[str] = []
    receive = Receiver()
    departure = Departure({"type": "http"}, receive, lambda: heard.append("left"))
    assert not await departure.gone()
    assert receive.calls == 1
    receive.leave()
    for _ in range(3):  # the watcher's turn, then its done callback's
        await asyncio.sleep(0)
    assert heard == ["left"]
    departure.close()


async def test_without_a_link_a_client_gone_before_the_work_began_is_seen_at_once() -> None:
    heard: list[str] = []
    receive = Receiver()
    receive.leave()
    departure = Departure({"type": "http"}, receive, lambda: heard.append("left"))
    assert await departure.gone()
    departure.close()
    await asyncio.sleep(0)
    assert heard == []  # told by `gone`, not by a cut


async def test_closing_without_a_link_cancels_the_waiting_task() -> None:
    heard: list[str] = []
    receive = Receiver()
    departure = Departure({"type": "http"}, receive, lambda: heard.append("left"))
    assert not await departure.gone()
    watcher = departure.watcher
    assert watcher is not None
    departure.close()
    await asyncio.sleep(0)
    assert watcher.cancelled()
    assert heard == []


async def test_closing_leaves_the_next_requests_listener_in_place() -> None:
    link, heard = ClientLink(), []
    first = Departure(linked(link), Receiver(), lambda: heard.append("first"))
    second = Departure(linked(link), Receiver(), lambda: heard.append("second"))
    first.close()  # late: the connection's next request listens already
    link.lost()
    second.close()
    assert heard == ["second"]
