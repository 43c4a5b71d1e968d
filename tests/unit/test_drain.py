"""The door while draining: new requests get a clean 503, probes and the scrape still answer,
and requests let in before are counted until they end."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.drain import Drain, DrainGuard
from gateway.proxy.cut import Cut
from gateway.proxy.outcome import Outcome

pytestmark = pytest.mark.asyncio(loop_scope="session")


def guarded(drain: Drain, release: asyncio.Event, entered: asyncio.Event) -> Starlette:
    async def slow(_: Request) -> Response:
        entered.set()
        await release.wait()
        return JSONResponse({"done": True})

    async def ok(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [Route("/v1/slow", slow), *(Route(p, ok) for p in ("/readyz", "/healthz", "/metrics"))]
    return Starlette(routes=routes, middleware=[Middleware(DrainGuard, drain=drain)])


async def test_new_requests_are_refused_while_the_one_let_in_finishes() -> None:
    drain, release, entered = Drain(), asyncio.Event(), asyncio.Event()
    transport = httpx.ASGITransport(app=guarded(drain, release, entered))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = asyncio.create_task(client.get("/v1/slow"))
        await asyncio.wait_for(entered.wait(), 10)
        assert (drain.in_flight, drain.idle) == (1, False)
        drain.begin()
        refused = await client.get("/v1/slow")
        probes = [(await client.get(p)).status_code for p in ("/readyz", "/healthz", "/metrics")]
        release.set()
        finished = await asyncio.wait_for(first, 10)
    assert (finished.status_code, finished.json()) == (200, {"done": True})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "gateway_draining"
    assert refused.json()["error"]["type"] == "service_unavailable"
    assert probes == [200, 200, 200]
    assert (drain.in_flight, drain.idle) == (0, True)


async def test_the_end_of_the_grace_cuts_each_proxied_request_once_as_a_shutdown() -> None:
    drain = Drain()
    waiting = [asyncio.create_task(asyncio.sleep(60)) for _ in range(2)]
    cuts = [Cut(task) for task in waiting]
    drain.cuts.update(cuts)
    cuts[1].client_left()  # already cut for another reason: that one stands
    assert drain.cut() == 2
    await asyncio.gather(*waiting, return_exceptions=True)
    assert all(task.cancelled() for task in waiting)
    assert [cut.outcome for cut in cuts] == [
        Outcome.GATEWAY_SHUTDOWN,
        Outcome.CLIENT_DISCONNECTED,
    ]
