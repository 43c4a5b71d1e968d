"""Failover before the first byte: an engine that answers 5xx, or cannot be reached, is skipped
for the model's next engine; a request is never sent again once the client got a byte."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.app import create_app
from gateway.netutil import free_port
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, gateway_settings
from tests.integration.sim_fixture import running_sim, sim_state, wait_running
from tests.support.servers import serve_asgi
from tests.support.sim_processes import SimProcess, sim_processes

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """A gateway in front of [failing engine, dead port, healthy engine], in that order."""
    failing = SimConfig(models=[MODEL], fail_rate=1.0, fail_status=503)
    async with running_sim(failing) as bad, running_sim(SimConfig(models=[MODEL])) as good:
        dead = f"http://127.0.0.1:{free_port()}"
        settings = gateway_settings(
            good,
            tmp_path / "spill",
            models=[{"name": MODEL, "engines": [bad, dead, good]}],
            routing={"strategy": "round_robin"},
        )
        async with serve_asgi(create_app(settings)) as gateway:
            yield gateway, bad, good


async def test_every_request_lands_on_the_healthy_engine(fleet: tuple[str, str, str]) -> None:
    gateway, bad, good = fleet
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as oai:
        for _ in range(6):
            reply = await oai.chat.completions.create(model=MODEL, messages=HELLO)
            assert reply.choices[0].message.content
        for _ in range(3):
            stream = await oai.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            chunks = [c async for c in stream]
            assert chunks[-1].choices[0].finish_reason is not None
    async with aiohttp.ClientSession() as http:
        served = (await sim_state(http, good))["total_requests"]
        refused = (await sim_state(http, bad))["total_requests"]
    assert served == 9  # each request once: nothing was sent twice to an engine that answered
    assert refused >= 1  # tried while it was not yet marked down, then skipped


async def test_an_engine_that_says_it_is_overloaded_hands_its_requests_on(tmp_path: Path) -> None:
    """An engine's 429 went to the client while the model's other engine was free; it is not
    a failure of the engine either (never a step towards its ejection)."""
    busy = SimConfig(models=[MODEL], fail_rate=1.0, fail_status=429)
    async with running_sim(busy) as full, running_sim(SimConfig(models=[MODEL])) as free:
        settings = gateway_settings(
            free,
            tmp_path / "spill",
            models=[{"name": MODEL, "engines": [full, free]}],
            routing={"strategy": "round_robin"},
        )
        async with (
            serve_asgi(create_app(settings)) as gateway,
            openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="k", max_retries=0) as oai,
        ):
            for stream in (False, True) * 4:
                reply = await oai.chat.completions.with_raw_response.create(
                    model=MODEL, messages=HELLO, stream=stream
                )
                assert reply.http_response.status_code == 200
            async with aiohttp.ClientSession() as http:
                asked = (await sim_state(http, full))["total_requests"]
                engines = await (
                    await http.get(f"{gateway}/admin/v1/engines", headers=ADMIN)
                ).json()
    assert asked >= 4  # its turns, every one: never ejected
    state = next(e for e in engines["data"] if e["url"] == full)
    assert (state["state"], state["ejections"]) == ("up", 0), state


async def test_a_5xx_from_the_last_engine_left_is_the_answer(tmp_path: Path) -> None:
    failing = SimConfig(models=[MODEL], fail_rate=1.0, fail_status=500)
    async with running_sim(failing) as bad:
        settings = gateway_settings(bad, tmp_path / "spill")
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            body = {"model": MODEL, "messages": HELLO}
            async with http.post(f"{gateway}/v1/chat/completions", json=body) as resp:
                assert resp.status == 500
                assert (await resp.json())["error"]["message"]


async def test_a_saturated_gateway_answers_busy_and_marks_no_engine_down(tmp_path: Path) -> None:
    async with running_sim(SimConfig(models=[MODEL], ttft_ms=600)) as slow:
        settings = gateway_settings(
            slow, tmp_path / "spill", upstream={"max_connections_per_engine": 2}
        )
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            url = f"{gateway}/v1/chat/completions"

            async def ask() -> tuple[int, str | None, Any]:
                async with http.post(url, json={"model": MODEL, "messages": HELLO}) as resp:
                    return resp.status, resp.headers.get("retry-after"), await resp.json()

            answers = await asyncio.gather(*(ask() for _ in range(5)))
            assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503, 503]
            for status, retry_after, body in answers:
                if status == 503:
                    assert body["error"]["code"] == "gateway_busy"
                    assert retry_after == "1"
            # The engine was never at fault: the next request goes straight to it.
            status, _, body = await ask()
            assert status == 200, body
            assert (await sim_state(http, slow))["total_requests"] == 3


async def test_requests_still_waiting_for_their_headers_count_against_max_connections(
    tmp_path: Path,
) -> None:
    # Two requests the engine holds without a byte of answer (a long prefill; a plain embeddings
    # request, whose headers come with the whole answer) are in flight all the same.
    async with running_sim(SimConfig(models=[MODEL])) as sim:
        settings = gateway_settings(sim, tmp_path / "spill", upstream={"max_connections": 2})
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            url = f"{gateway}/v1/chat/completions"

            async def ask(sim_faults: dict[str, Any]) -> tuple[int, str | None, Any]:
                body = {"model": MODEL, "messages": HELLO, "sim": sim_faults}
                async with http.post(url, json=body) as resp:
                    return resp.status, resp.headers.get("retry-after"), await resp.json()

            held = [asyncio.create_task(ask({"hang": True})) for _ in range(2)]
            await wait_running(http, sim, 2)
            status, retry_after, body = await ask({})
            assert (status, retry_after, body["error"]["code"]) == (503, "1", "gateway_busy")
            for task in held:  # their clients leave: the engine aborts, the places are free
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await wait_running(http, sim, 0)
            status, _, body = await ask({})
            assert status == 200, body
            assert (await sim_state(http, sim))["total_requests"] == 3


@asynccontextmanager
async def two_engine_processes(tmp_path: Path) -> AsyncIterator[tuple[str, SimProcess, SimProcess]]:
    """A gateway (round robin, health checks far apart) in front of two simulator engines
    started through the real CLI, to be killed: the gateway's URL and the two engines."""
    a, b = SimProcess((MODEL,)), SimProcess((MODEL,))
    async with sim_processes(a, b):
        settings = gateway_settings(
            a.url,
            tmp_path / "spill",
            models=[{"name": MODEL, "engines": [a.url, b.url]}],
            routing={"strategy": "round_robin", "health_interval_s": 60},
        )
        async with serve_asgi(create_app(settings)) as gateway:
            yield gateway, a, b


async def test_an_engine_killed_under_kept_alive_connections_loses_no_request(
    tmp_path: Path,
) -> None:
    # Engines started through the real CLI; the gateway holds pooled keep-alive connections to
    # both when one is SIGKILLed. Requests sent at once must fail over, not answer 502.
    async with two_engine_processes(tmp_path) as (gateway, a, b), aiohttp.ClientSession() as http:
        url = f"{gateway}/v1/chat/completions"

        async def ask() -> int:
            async with http.post(url, json={"model": MODEL, "messages": HELLO}) as resp:
                await resp.read()
                return resp.status

        assert await asyncio.gather(*(ask() for _ in range(8))) == [200] * 8
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)  # no await: the pool has not noticed yet
        assert await asyncio.gather(*(ask() for _ in range(8))) == [200] * 8
        await a.kill()
        assert (await sim_state(http, b.url))["total_requests"] >= 8 + 4


async def test_an_engine_killed_before_the_first_token_loses_no_request(tmp_path: Path) -> None:
    """vLLM answers 200 as it takes a request and sends the first frame with the first token:
    requests waiting for it on an engine killed then (queued, prefilling) broke after the
    headers, and failed (a stream: 200 and an error frame; a plain request: 502) while the
    other engine was idle. Nothing had been generated, and nothing reached the clients: they
    go to the next engine."""
    async with (
        two_engine_processes(tmp_path) as (gateway, a, b),
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0) as oai,
    ):
        slow = {"sim": {"ttft_ms": 500}}

        async def plain() -> str | None:
            reply = await oai.chat.completions.create(model=MODEL, messages=HELLO, extra_body=slow)
            return reply.choices[0].finish_reason

        async def streamed() -> str | None:
            stream = await oai.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, extra_body=slow
            )
            return [c async for c in stream if c.choices][-1].choices[0].finish_reason

        asked = [asyncio.create_task(f()) for f in (plain, streamed) * 4]
        await wait_running(http, a.url, 4)  # half of them wait on `a` for their first token
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        assert all(await asyncio.gather(*asked))  # every one answered whole
        assert (await sim_state(http, b.url))["total_requests"] == 8


async def test_a_responses_request_on_an_engine_killed_before_its_first_token_goes_on(
    tmp_path: Path,
) -> None:
    """vLLM sends a Responses stream's first two events as it takes the request: an engine
    killed while requests waited for their first token dropped them after those, which was
    taken for a refusal of a field (a stream: 200 and an `engine_refused` event; a plain
    request: asked again of the dead engine, 502) while the other engine was idle."""
    async with (
        two_engine_processes(tmp_path) as (gateway, a, b),
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0) as oai,
    ):
        slow = {"sim": {"ttft_ms": 500}}

        async def plain() -> str:
            reply = await oai.responses.create(model=MODEL, input="hello", extra_body=slow)
            return reply.status or ""

        async def streamed() -> str:
            stream = await oai.responses.create(
                model=MODEL, input="hello", stream=True, extra_body=slow
            )
            return [e.type async for e in stream][-1]

        asked = [asyncio.create_task(f()) for f in (plain, streamed) * 4]
        await wait_running(http, a.url, 4)  # half of them wait on `a` for their first token
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        assert await asyncio.gather(*asked) == ["completed", "response.completed"] * 4
        assert (await sim_state(http, b.url))["total_requests"] == 8
