"""Metering across a gateway's end: SIGTERM under load loses no record; settlements Redis could
not take are spilled at shutdown and replayed by the next gateway."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.metering.ledger import log_key
from gateway.metering.spill import count_lines
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.gateways import gateway_process, shared_config, tenant_key
from tests.support.key_cache import auth_feed_subscribed
from tests.support.redis_control import RedisProxy, redis_proxy
from tests.support.usage_records import ledger_records

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello"}]
# uvicorn drains, runs the lifespan's shutdown, then re-raises the signal it caught.
STOPPED_BY_SIGTERM = -signal.SIGTERM


async def _ledger_size(redis_url: str, tenant: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        return int(await redis.xlen(log_key(tenant)))
    finally:
        await redis.aclose()


async def _served_once(http: aiohttp.ClientSession, url: str, redis_url: str, tenant: str) -> Any:
    """A key of `tenant`, cached by the gateway at `url` and its first request's settlement in
    Redis (so Redis can be taken away next): the key's headers."""
    await auth_feed_subscribed(redis_url)
    headers = await tenant_key(http, url, tenant)
    body = {"model": MODEL, "messages": HELLO}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200  # caches the key and its tenant
    async with asyncio.timeout(5):
        while await _ledger_size(redis_url, tenant) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return headers


@dataclass(frozen=True)
class _Proxied:
    """A Redis behind a proxy the test can stall or make refuse, a simulator, and a gateway's
    config file naming both (the gateway itself is started by the test)."""

    redis_url: str  # Redis itself, for the test's own reads
    proxy: RedisProxy  # what the gateway talks to
    http: aiohttp.ClientSession
    config: Path


@asynccontextmanager
async def _proxied(
    tmp_path: Path, metering: str, sim_config: SimConfig | None = None
) -> AsyncIterator[_Proxied]:
    """`metering`: the config's further `metering:` lines (spill_dir is set)."""
    async with (
        running_redis(None) as redis_url,
        running_sim(sim_config or SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        async with redis_proxy(port) as proxy:
            extra = f"metering:\n  spill_dir: {tmp_path}/spill\n  {metering}\n"
            config = shared_config(
                tmp_path / "gw.yaml", redis_url=proxy.url, model=MODEL, sim=sim, extra=extra
            )
            yield _Proxied(redis_url, proxy, http, config)


async def test_sigterm_under_load_writes_a_record_for_every_request_an_engine_saw(
    tmp_path: Path,
) -> None:
    sim_config = SimConfig(models=[MODEL], max_tokens=20, itl_ms=25)  # ~0.5 s per stream
    async with (
        running_redis(None) as redis_url,
        running_sim(sim_config) as sim,
        aiohttp.ClientSession() as http,
    ):
        extra = f"shutdown_grace_s: 20\nmetering:\n  spill_dir: {tmp_path}/spill\n"
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim, extra=extra
        )
        async with gateway_process(config) as gw:
            headers = await tenant_key(http, gw.url, "load")
            body = {"model": MODEL, "messages": HELLO, "stream": True}
            stop = asyncio.Event()
            finished: list[str] = []

            async def client() -> None:
                while not stop.is_set():
                    try:
                        async with http.post(
                            f"{gw.url}/v1/chat/completions", json=body, headers=headers
                        ) as resp:
                            text = await resp.text()
                        if resp.status == 503:  # draining: refused at the door
                            finished.append("refused")
                            await asyncio.sleep(0.05)
                            continue
                        finished.append("ok" if text.endswith("data: [DONE]\n\n") else "cut")
                    except aiohttp.ClientError:
                        finished.append("refused")
                        await asyncio.sleep(0.05)

            clients = [asyncio.create_task(client()) for _ in range(12)]
            await asyncio.sleep(1.2)
            gw.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)  # clients keep knocking while it drains
            stop.set()
            await asyncio.gather(*clients)
            assert await gw.process.wait() == STOPPED_BY_SIGTERM
        reached = (await sim_state(http, sim))["total_requests"]
        # Streams in flight at SIGTERM were allowed to finish: none was cut.
        assert finished.count("cut") == 0
        assert finished.count("refused") > 0  # the test did knock after the listener closed
        assert reached == finished.count("ok") > 12
        assert await _ledger_size(redis_url, "load") == reached
        assert not list((tmp_path / "spill").glob("*.jsonl"))  # all of it went to Redis


async def test_a_ledger_unreachable_at_shutdown_is_spilled_then_replayed(tmp_path: Path) -> None:
    async with _proxied(tmp_path, "flush_timeout_s: 1") as stack:
        http, proxy, redis_url = stack.http, stack.proxy, stack.redis_url
        url = "/v1/chat/completions"
        body = {"model": MODEL, "messages": HELLO}
        async with gateway_process(stack.config) as gw:
            headers = await _served_once(http, gw.url, redis_url, "spill")
            proxy.set_mode("refuse")
            for _ in range(5):
                async with http.post(gw.url + url, json=body, headers=headers) as resp:
                    assert resp.status == 200  # served, its settlement queued
            gw.process.send_signal(signal.SIGTERM)
            assert await gw.process.wait() == STOPPED_BY_SIGTERM
        spilled = list((tmp_path / "spill").glob("*.jsonl"))
        assert sum(count_lines(f) for f in spilled) == 5  # (settlements: blank lines aside)
        assert await _ledger_size(redis_url, "spill") == 1

        proxy.set_mode("pass")
        async with gateway_process(stack.config):  # a new gateway replays what the last one left
            async with asyncio.timeout(15):
                while await _ledger_size(redis_url, "spill") < 6:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert await _ledger_size(redis_url, "spill") == 6
            assert not list((tmp_path / "spill").glob("*.jsonl"))


async def test_a_ctrl_c_once_stopping_still_spills_what_was_on_its_way_to_redis(
    tmp_path: Path,
) -> None:
    """Found by review: a SIGINT once the gateway was stopping (uvicorn's force exit: a second
    Ctrl-C) skipped the app's shutdown: the settlements being written to a Redis that did not
    answer, and those gathering behind them, were lost with no spill, no line and no lost
    count. The shutdown runs, in a hurry: they are spilled. (Stopping is held open here by a
    stream whose client reads nothing: its end cannot be written for ANSWER_END_S.)"""
    sim_config = SimConfig(models=[MODEL], max_model_len=1_000_000)
    async with _proxied(tmp_path, "write_timeout_s: 30", sim_config) as stack:
        http, proxy = stack.http, stack.proxy
        url = "/v1/chat/completions"
        body = {"model": MODEL, "messages": HELLO}
        async with gateway_process(stack.config) as gw:
            headers = await _served_once(http, gw.url, stack.redis_url, "hurried")
            proxy.set_mode("stall")  # Redis takes the writes and never answers
            served = []
            for i in range(4):
                said = {**headers, "x-request-id": f"hurried-{i}"}
                async with http.post(gw.url + url, json=body, headers=said) as resp:
                    assert resp.status == 200  # served, its settlement on its way
                    served.append(resp.headers["x-request-id"])
            flood = {**body, "stream": True, "max_tokens": 200_000, "sim": {"itl_ms": 0}}
            async with http.post(gw.url + url, json=flood, headers=headers) as unread:
                assert unread.status == 200, await unread.text()
                await asyncio.sleep(2)  # the socket's buffers fill: its writes wait
                gw.process.send_signal(signal.SIGINT)  # a drain, the stream in flight
                await asyncio.sleep(0.3)
                gw.process.send_signal(signal.SIGINT)  # the grace ends: the stream is cut
                await asyncio.sleep(0.5)  # (uvicorn waits ANSWER_END_S for its end)
                gw.process.send_signal(signal.SIGINT)  # stop now
                await asyncio.wait_for(gw.process.wait(), 30)
        spilled = "".join(f.read_text() for f in (tmp_path / "spill").glob("*.jsonl"))
        assert all(request_id in spilled for request_id in served), spilled[:500]


async def test_a_ctrl_c_while_the_usage_flush_waits_on_redis_cuts_it_short(
    tmp_path: Path,
) -> None:
    """Found by review: a signal while the shutdown's usage flush waited on a Redis that did
    not answer left it waiting the whole flush_timeout_s (here 60 s); it gives Redis
    HURRIED_FLUSH_S more, then spills."""
    async with _proxied(tmp_path, "flush_timeout_s: 60") as stack:
        http = stack.http
        url = "/v1/chat/completions"
        body = {"model": MODEL, "messages": HELLO}
        log = tmp_path / "gw.log"
        async with gateway_process(stack.config, log=log) as gw:
            headers = await _served_once(http, gw.url, stack.redis_url, "flushing")
            stack.proxy.set_mode("stall")  # Redis takes the writes and never answers
            for _ in range(3):
                async with http.post(gw.url + url, json=body, headers=headers) as resp:
                    assert resp.status == 200
            gw.process.send_signal(signal.SIGINT)  # nothing in flight: the flush begins
            async with asyncio.timeout(10):
                while b"flushing usage" not in log.read_bytes():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # (the flush waits on Redis)
            gw.process.send_signal(signal.SIGINT)
            await asyncio.wait_for(gw.process.wait(), 20)  # (not the flush's 60 s)
        spilled = list((tmp_path / "spill").glob("*.jsonl"))
        assert sum(count_lines(f) for f in spilled) == 3


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_gateway_flushing_usage_at_shutdown_refuses_new_connections(
    tmp_path: Path, workers: str
) -> None:
    """Found by review: while the workers of `--workers 2` flushed usage to a Redis that did
    not answer (up to metering.flush_timeout_s), their supervisor still held the listening
    socket: the kernel accepted new connections that no worker would ever serve, and reset
    them when the process exited (clients hung ~9 s, then a read error). A single process
    refuses them at once, which a client or load balancer retries on another replica; so do
    the workers' now."""
    async with _proxied(tmp_path, "flush_timeout_s: 60") as stack:
        log = tmp_path / "gw.log"
        async with gateway_process(stack.config, "--workers", workers, log=log) as gw:
            headers = await _served_once(stack.http, gw.url, stack.redis_url, "closing")
            stack.proxy.set_mode("stall")  # Redis takes the writes and never answers
            body = {"model": MODEL, "messages": HELLO}
            async with stack.http.post(
                gw.url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.status == 200  # its settlement waits on Redis
            gw.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):  # every worker's listener closed, its flush waiting
                while log.read_bytes().count(b"flushing usage") < int(workers):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            host, port = gw.url.removeprefix("http://").split(":")
            try:
                taken = await _taken(host, int(port))
            finally:
                gw.process.send_signal(signal.SIGINT)  # the flush gives up: spilled
                await asyncio.wait_for(gw.process.wait(), 30)
        assert taken is None, f"a connection was taken while stopping: {taken!r}"


async def _taken(host: str, port: int) -> bytes | None:
    """None if a connection to `host:port` is refused; else what a health check on it read
    within 5 s."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return None
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 5) or b"(closed)"
    except TimeoutError:
        return b"(nothing within 5 s)"
    finally:
        writer.close()


async def test_a_stream_uvicorn_cancels_at_the_end_is_billed_what_it_carried(
    tmp_path: Path,
) -> None:
    """Found by review: a stream whose end (its error frame at the drain's end) could not be
    written within ANSWER_END_S was cancelled by uvicorn itself, and that cancel was counted as
    an answer that never reached its client: the record said 0 tokens although the client had
    been sent tokens all along. It is billed what the engine generated for it, as a stream the
    drain cuts is."""
    sim_config = SimConfig(models=[MODEL], max_model_len=1_000_000)
    async with (
        running_redis(None) as redis_url,
        running_sim(sim_config) as sim,
        aiohttp.ClientSession() as http,
    ):
        extra = f"shutdown_grace_s: 1\nmetering:\n  spill_dir: {tmp_path}/spill\n"
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim, extra=extra
        )
        async with gateway_process(config) as gw:
            headers = await tenant_key(http, gw.url, "unread")
            flood = {
                "model": MODEL,
                "messages": HELLO,
                "stream": True,
                "max_tokens": 200_000,
                "sim": {"itl_ms": 0},
            }
            async with http.post(
                gw.url + "/v1/chat/completions", json=flood, headers=headers
            ) as unread:
                assert unread.status == 200, await unread.text()
                await asyncio.sleep(2)  # the socket's buffers fill: its writes wait
                gw.process.send_signal(signal.SIGTERM)  # the grace ends with the stream's end
                # unwritten; uvicorn cancels it ANSWER_END_S later
                await asyncio.wait_for(gw.process.wait(), 30)
        [record] = await ledger_records(redis_url, "unread")
    assert (record.outcome, record.status) == ("gateway_shutdown", 200)  # it did not leave
    assert record.completion_tokens > 1000, record  # (the buffers hold far more than that)
