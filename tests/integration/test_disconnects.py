"""A client that goes away at any stage makes the engine drop the request (running back to 0)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.integration.conftest import ADMIN, DEAD_MODEL, MODEL, Stack
from tests.integration.metering_fixture import Meter, meter_fixture  # noqa: F401 (the fixture)
from tests.integration.sim_fixture import wait_running
from tests.support.raw_http import leases_held, post_request

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def abandon(stack: Stack, body: dict[str, Any], read_chunks: int | None) -> None:
    """Send a request, read `read_chunks` body chunks (None: not even the headers), keep the
    connection open until the engine is seen generating, then hang up."""
    reached = asyncio.Event()

    async def client() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status == 200
            for _ in range(read_chunks or 0):
                assert await resp.content.readany()
            reached.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(client())
    await wait_running(stack.http, stack.sim, 1)
    if read_chunks is not None:
        await asyncio.wait_for(reached.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_disconnect_while_waiting_for_a_non_stream_answer(stack: Stack) -> None:
    await abandon(stack, {**CHAT, "sim": {"ttft_ms": 1000, "itl_ms": 50}}, read_chunks=None)
    await wait_running(stack.http, stack.sim, 0)


async def test_disconnect_while_waiting_for_the_first_token(stack: Stack) -> None:
    # The stream's headers are out; the first token is 1.2 s away when the client leaves.
    await abandon(stack, {**CHAT, "stream": True, "sim": {"ttft_ms": 1200}}, read_chunks=0)
    await wait_running(stack.http, stack.sim, 0)


async def test_disconnect_mid_stream_stops_generation(stack: Stack) -> None:
    before = (await stack.sim_state())["generation_tokens_total"]
    assert isinstance(before, int)
    body = {**CHAT, "stream": True, "max_tokens": 50, "sim": {"itl_ms": 100}}
    await abandon(stack, body, read_chunks=2)
    await wait_running(stack.http, stack.sim, 0)
    await asyncio.sleep(0.3)  # a generation that went on would keep counting tokens
    after = (await stack.sim_state())["generation_tokens_total"]
    assert isinstance(after, int)
    assert 0 < after - before < 50


async def test_gateway_metrics_count_requests_and_upstream_errors(stack: Stack) -> None:
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
    dead = {**CHAT, "model": DEAD_MODEL}
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=dead) as resp:
        assert resp.status == 503
    async with stack.http.get(f"{stack.gateway}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    assert f'llmaas_requests_total{{model="{MODEL}",route="chat/completions",status="200"}}' in text
    assert (
        f'llmaas_requests_total{{model="{DEAD_MODEL}",route="chat/completions",status="503"}}'
        in text
    )
    assert "llmaas_request_duration_seconds_bucket" in text
    assert 'llmaas_upstream_errors_total{engine="http://127.0.0.1:' in text
    assert 'kind="connect"' in text
    assert "llmaas_inflight_requests" in text


async def test_a_stream_silent_midway_is_counted_as_its_clients_cut_stream(stack: Stack) -> None:
    # Counted `timeout`, as a 504 is, LlmaasEngineStreamsCut missed the 200s it cut. So it did
    # a first token slower than the idle timeout (found 2026-12-07): its client had its 200
    # too, then the error frame, and no alert read it (neither a 5xx nor a cut stream).
    before = await upstream_errors(stack)
    for sim in ({"itl_ms": 4000}, {"ttft_ms": 4000}):
        body = {**CHAT, "stream": True, "max_tokens": 5, "sim": sim}
        async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert '"code":"engine_timeout"' in text
    after = await upstream_errors(stack)
    assert after.get("stream_timeout", 0) - before.get("stream_timeout", 0) == 2
    assert after.get("timeout", 0) == before.get("timeout", 0)


async def upstream_errors(stack: Stack) -> dict[str, float]:
    """llmaas_upstream_errors_total by kind, over engines."""
    async with stack.http.get(f"{stack.gateway}/metrics", headers=ADMIN) as resp:
        metrics = await resp.text()
    counts: dict[str, float] = {}
    for kind, value in re.findall(
        r'^llmaas_upstream_errors_total\{[^}]*kind="(\w+)"\} (\S+)$', metrics, re.M
    ):
        counts[kind] = counts.get(kind, 0) + float(value)
    return counts


async def test_a_client_gone_while_admitted_is_sent_to_no_engine(meter: Meter) -> None:
    # Admission replies come 0.4 s late; the client hangs up 0.15 s in, after its body was
    # read: the proxy must not send the request on, so no engine and no usage record.
    key = await meter.new_key("gone-early", max_concurrency=5)
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": MODEL, "messages": messages, "stream": True}
    head, payload = post_request("/v1/chat/completions", body, f"Bearer {key}")
    port = int(meter.gateway.rsplit(":", 1)[1])
    meter.proxy.set_mode("delay", delay_s=0.4)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + payload)
        await writer.drain()
        await asyncio.sleep(0.15)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.5)  # admitted (late) by now
    finally:
        meter.proxy.set_mode("pass")
    assert meter.proxy.delayed >= 1  # the admission did go through the slow Redis
    redis = Redis.from_url(meter.redis_server.url)
    try:
        async with asyncio.timeout(15):  # settled (retried once Redis answers in time)
            while any((await leases_held(redis)).values()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    async with meter.client(key) as oai:  # its lease was given back: all 5 slots are free
        done = await asyncio.gather(
            *(oai.chat.completions.create(model=MODEL, messages=messages) for _ in range(5))  # type: ignore[arg-type]
        )
    assert len(done) == 5
    records = await meter.wait_records("gone-early", 5)
    assert [r.outcome for r in records] == ["ok"] * 5
