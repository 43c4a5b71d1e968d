"""Overload: engines whose waiting queue is at the bound get no request; when every engine of a
model is there, requests are shed with 503 engines_overloaded and Retry-After, never charged to
limits nor billed; once the queues drain, requests are taken again. And the gateway's own bound
on the requests it serves at once.

The simulators' queues are set through POST /sim/queue (what their /metrics then reports), so
the tests drive what the gateway scrapes instead of racing load against the scrape interval.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.limits.limiter import scope_keys
from gateway.metering.ledger import log_key
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from gateway.state import GatewayState
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.gateways import ADMIN_TOKEN, PEPPER, admin_request
from tests.support.logs import collected
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "sim-model"
TENANT = "acme"
BOUND = 2  # routing.max_waiting_per_engine
HELLO: Any = [{"role": "user", "content": "hello"}]
CHAT: Any = {"model": MODEL, "messages": HELLO, "max_tokens": 4}
OPS = {"authorization": f"Bearer {ADMIN_TOKEN}"}  # /metrics is for operators


@dataclass(frozen=True, slots=True)
class Fleet:
    gateway: str
    app: FastAPI
    a: str  # simulator base URLs
    b: str
    redis: Redis
    http: aiohttp.ClientSession

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    async def new_key(self, **limits: Any) -> tuple[str, str]:
        """A key of TENANT: (its id, its secret)."""
        status, body = await admin_request(
            self.http, self.gateway, "POST", "/keys", {"tenant": TENANT, **limits}
        )
        assert status == 201, body
        return body["id"], body["key"]

    async def queue(self, sim: str, waiting: int) -> None:
        """Make `sim` report `waiting` queued requests, and wait until the gateway scraped it."""
        async with self.http.post(f"{sim}/sim/queue", json={"waiting": waiting}) as resp:
            assert resp.status == 200, await resp.text()
        engine = next(e for e in self.state.registry.engines() if e.url == sim)
        deadline = time.monotonic() + 10.0
        while engine.load.waiting != waiting:
            assert time.monotonic() < deadline, f"the gateway never saw {sim} at {waiting}"
            await asyncio.sleep(0.02)

    async def served(self, sim: str) -> int:
        total: int = (await sim_state(self.http, sim))["total_requests"]
        return total

    async def leases(self, key_id: str) -> int:
        key_scope, tenant_scope = scope_keys(TENANT, key_id)
        return int(await self.redis.zcard(key_scope[2])) + int(
            await self.redis.zcard(tenant_scope[2])
        )

    async def requests_counted(self, key_id: str) -> int:
        """Entries in the key's rpm window: requests admission charged."""
        return int(await self.redis.zcard(scope_keys(TENANT, key_id)[0][0]))

    async def records(self) -> int:
        return int(await self.redis.xlen(log_key(TENANT)))

    async def metric(self, line_start: str) -> float:
        async with self.http.get(f"{self.gateway}/metrics", headers=OPS) as resp:
            text = await resp.text()
        values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start)]
        return sum(values)


def fleet_settings(a: str, b: str, redis_url: str, spill_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "models": [{"name": MODEL, "engines": [a, b]}],
            "redis_url": redis_url,
            "admin_token": ADMIN_TOKEN,
            "key_pepper": PEPPER,
            "routing": {
                "strategy": "round_robin",
                "scrape_interval_s": 0.05,
                "max_waiting_per_engine": BOUND,
                "health_interval_s": 60,
            },
            "metering": {"spill_dir": str(spill_dir)},
        }
    )


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as a,
        running_sim(SimConfig(models=[MODEL])) as b,
    ):
        app = create_app(fleet_settings(a, b, redis_url, tmp_path / "spill"))
        async with serve_asgi(app) as gateway, aiohttp.ClientSession() as http:
            redis = Redis.from_url(redis_url)
            try:
                yield Fleet(gateway, app, a, b, redis, http)
            finally:
                await redis.aclose()


async def post(
    fleet: Fleet, key: str, path: str, body: dict[str, Any]
) -> tuple[int, str | None, dict[str, Any]]:
    """(status, Retry-After, body) of one request, read to its end."""
    headers = {"authorization": f"Bearer {key}"}
    async with fleet.http.post(f"{fleet.gateway}{path}", json=body, headers=headers) as resp:
        raw = await resp.read()
        json = resp.content_type == "application/json"
        answer: dict[str, Any] = orjson.loads(raw) if json else {}
        return resp.status, resp.headers.get("retry-after"), answer


async def shed_round(fleet: Fleet, key: str) -> list[tuple[int, str | None, dict[str, Any]]]:
    """Chat (plain and streamed), completions, embeddings and a Responses create, at once."""
    asks = [
        post(fleet, key, "/v1/chat/completions", CHAT),
        post(fleet, key, "/v1/chat/completions", {**CHAT, "stream": True}),
        post(fleet, key, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4}),
        post(fleet, key, "/v1/embeddings", {"model": MODEL, "input": "hi"}),
        post(fleet, key, "/v1/responses", {"model": MODEL, "input": "hi"}),
    ]
    return await asyncio.gather(*asks)


async def test_full_queues_shed_before_admission_and_drained_queues_take_requests_again(
    fleet: Fleet,
) -> None:
    key_id, key = await fleet.new_key(rpm=100, max_concurrency=3)
    await fleet.queue(fleet.a, BOUND + 3)
    await fleet.queue(fleet.b, BOUND)  # at the bound is over it

    answers = await shed_round(fleet, key)
    assert [status for status, _, _ in answers] == [503] * 5
    for _, retry_after, body in answers:
        assert body["error"]["code"] == "engines_overloaded"
        assert body["error"]["type"] == "service_unavailable"
        assert retry_after == "1"  # scrape interval 0.05 s, at least a second
    async with openai.AsyncOpenAI(
        base_url=f"{fleet.gateway}/v1", api_key=key, max_retries=0
    ) as oai:
        with pytest.raises(openai.InternalServerError) as info:
            await oai.chat.completions.create(model=MODEL, messages=HELLO)
    assert info.value.status_code == 503
    assert info.value.code == "engines_overloaded"

    assert (await fleet.served(fleet.a), await fleet.served(fleet.b)) == (0, 0)
    assert await fleet.leases(key_id) == 0
    assert await fleet.requests_counted(key_id) == 0  # refused before admission: not charged
    assert await fleet.metric('llmaas_requests_shed_total{model="sim-model"}') == 6
    assert all(e.health.is_up() for e in fleet.state.registry.engines())  # none marked down

    # One engine below the bound: it takes every request.
    await fleet.queue(fleet.b, BOUND - 1)
    for _ in range(4):
        status, _, body = await post(fleet, key, "/v1/chat/completions", CHAT)
        assert status == 200, body
    assert (await fleet.served(fleet.a), await fleet.served(fleet.b)) == (0, 4)

    # Both drained: round robin over both again.
    await fleet.queue(fleet.a, 0)
    await fleet.queue(fleet.b, 0)
    for _ in range(4):
        status, _, body = await post(fleet, key, "/v1/chat/completions", CHAT)
        assert status == 200, body
    assert (await fleet.served(fleet.a), await fleet.served(fleet.b)) == (2, 6)

    assert await fleet.requests_counted(key_id) == 8
    # Leases go back with the settlements, which reach Redis a moment after the answers.
    await until(partial(fleet.leases, key_id), 0)
    await until(fleet.records, 8)
    await asyncio.sleep(0.3)  # a moment for any extra (a shed request's) record to show
    assert await fleet.records() == 8  # the shed requests left no usage record
    assert await fleet.metric('llmaas_requests_shed_total{model="sim-model"}') == 6


async def test_a_request_shed_after_admission_is_released_and_not_billed(fleet: Fleet) -> None:
    # The queues fill while the request waits for admission (a scrape lands meanwhile): the
    # balancer refuses it after admission charged it; the charge is given back.
    key_id, key = await fleet.new_key(rpm=100, max_concurrency=1)
    admission = fleet.state.admission
    admit = admission.admit

    async def admit_then_queues_fill(*args: Any, **kwargs: Any) -> Any:
        admitted = await admit(*args, **kwargs)
        await fleet.queue(fleet.a, BOUND)
        await fleet.queue(fleet.b, BOUND)
        return admitted

    admission.admit = admit_then_queues_fill  # type: ignore[method-assign]
    try:
        status, retry_after, body = await post(fleet, key, "/v1/chat/completions", CHAT)
    finally:
        admission.admit = admit  # type: ignore[method-assign]
    assert status == 503
    assert body["error"]["code"] == "engines_overloaded"
    assert retry_after == "1"
    assert (await fleet.served(fleet.a), await fleet.served(fleet.b)) == (0, 0)
    await until(lambda: fleet.leases(key_id), 0)  # its concurrency slot is free again
    # nor does it count against requests per minute (it did: a settlement keeps the entry)
    await until(lambda: fleet.requests_counted(key_id), 0)
    assert await fleet.metric('llmaas_requests_shed_total{model="sim-model"}') == 1

    await fleet.queue(fleet.a, 0)
    await fleet.queue(fleet.b, 0)
    status, _, body = await post(fleet, key, "/v1/chat/completions", CHAT)  # max_concurrency 1
    assert status == 200, body
    await until(fleet.records, 1)
    await asyncio.sleep(0.3)
    assert await fleet.records() == 1  # the answered one only


async def until(
    read: Callable[[], Awaitable[int]], expected: int, deadline_s: float = 10.0
) -> None:
    deadline = time.monotonic() + deadline_s
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"stayed {value}, expected {expected}"
        await asyncio.sleep(0.02)


async def test_the_gateway_bounds_its_own_requests_at_every_stage(tmp_path: Path) -> None:
    # Two requests stuck sending their body hold the gateway's two places: no engine is
    # involved, so upstream.max_connections would never see them.
    async with running_sim(SimConfig(models=[MODEL])) as sim:
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "admin_token": ADMIN_TOKEN,
                "auth": {"required": False},
                "max_inflight_requests": 2,
                "metering": {"spill_dir": str(tmp_path / "spill")},
            }
        )
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            host, port = gateway.removeprefix("http://").split(":")
            stuck = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
            for _, writer in stuck:
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                    b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
                )
                await writer.drain()

            async def models() -> int:
                async with http.get(f"{gateway}/v1/models") as resp:
                    await resp.read()
                    return resp.status

            await until(models, 503)  # both stuck requests are in flight now
            async with http.post(f"{gateway}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 503
                assert resp.headers["retry-after"] == "1"
                assert (await resp.json())["error"]["code"] == "gateway_busy"
            async with http.get(f"{gateway}/readyz") as resp:  # probes are not bounded
                assert resp.status == 200
            async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
                busy = [
                    x
                    for x in (await resp.text()).splitlines()
                    if x.startswith("llmaas_gateway_busy_total")
                ]
            assert float(busy[0].rsplit(" ", 1)[1]) >= 2
            assert (await sim_state(http, sim))["total_requests"] == 0

            for _, writer in stuck:  # they give up: their places are free at once
                writer.close()
                await writer.wait_closed()
            await until(models, 200)
            async with http.post(f"{gateway}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200, await resp.text()


async def test_the_gateway_bounds_the_bodies_it_holds(tmp_path: Path) -> None:
    """7 concurrent requests of 14 MiB took a gateway past its pod's 1 GiB: a request holds
    several times its body as it is parsed and sent on. A body stuck on its way counts its
    declared length; past max_inflight_body_bytes, 503 gateway_busy; small ones pass."""
    async with running_sim(SimConfig(models=[MODEL])) as sim:
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "admin_token": ADMIN_TOKEN,
                "auth": {"required": False},
                "max_body_bytes": 1024 * 1024,
                "max_inflight_body_bytes": 1024 * 1024,
                "request_policy": {"max_data_url_bytes": 512 * 1024},
                "metering": {"spill_dir": str(tmp_path / "spill")},
            }
        )
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            host, port = gateway.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(  # 900 KB declared, one byte sent
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                b"content-type: application/json\r\ncontent-length: 900000\r\n\r\n{"
            )
            await writer.drain()
            big = {**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}

            async def big_one() -> int:
                async with http.post(f"{gateway}/v1/chat/completions", json=big) as resp:
                    await resp.read()
                    return resp.status

            await until(big_one, 503)  # the stuck body is counted now
            async with http.post(f"{gateway}/v1/chat/completions", json=big) as resp:
                assert resp.headers["retry-after"] == "1"
                assert (await resp.json())["error"]["code"] == "gateway_busy"
            async with http.post(f"{gateway}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200, await resp.text()  # a small one fits beside it
            writer.close()
            await writer.wait_closed()
            await until(big_one, 200)  # its bytes are free once it is gone

            # A gzip body counts what it decodes to: at its wire size alone (a few KB), many
            # bodies of max_body_bytes each were held at once (16 took a gateway past 1 GiB)
            _, held = await asyncio.open_connection(host, int(port))
            held.write(  # 900 KB declared, held: the decoded one does not fit beside it
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                b"content-type: application/json\r\ncontent-length: 900000\r\n\r\n{"
            )
            await held.drain()
            packed = gzip.compress(orjson.dumps(big))
            headers = {"content-type": "application/json", "content-encoding": "gzip"}
            statuses = []
            for _ in range(20):
                async with http.post(
                    f"{gateway}/v1/chat/completions", data=packed, headers=headers
                ) as resp:
                    statuses.append((resp.status, (await resp.json()).get("error", {}).get("code")))
                if statuses[-1][0] == 503:
                    break
                await asyncio.sleep(0.05)
            assert statuses[-1] == (503, "gateway_busy"), statuses
            held.close()
            await held.wait_closed()
            async with http.post(
                f"{gateway}/v1/chat/completions", data=packed, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()  # decoded, and nothing else held


async def test_a_request_refused_busy_after_admission_is_given_back_like_a_shed_one(
    tmp_path: Path,
) -> None:
    """Found by review: a 503 gateway_busy for this replica's upstream.max_connections came
    after admission and kept its requests-per-minute entry (three with an SDK's two retries),
    though the gateway, not the tenant, was the bottleneck, and its access line said
    engine_unavailable with every engine up. It is shed: given back whole, logged `shed`."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as a,
        running_sim(SimConfig(models=[MODEL])) as b,
    ):
        settings = fleet_settings(a, b, redis_url, tmp_path / "spill")
        settings.upstream.max_connections = 1
        settings.access_log = True
        app = create_app(settings)
        async with serve_asgi(app) as gateway, aiohttp.ClientSession() as http:
            redis = Redis.from_url(redis_url)
            fleet = Fleet(gateway, app, a, b, redis, http)
            try:
                _, holder = await fleet.new_key()
                key_id, key = await fleet.new_key(rpm=10, max_concurrency=2)
                held = asyncio.create_task(
                    post(fleet, holder, "/v1/chat/completions", {**CHAT, "sim": {"hang": True}})
                )
                while (await fleet.served(a)) + (await fleet.served(b)) < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # (polling the simulators: the one place held)
                with collected("llmaas.access") as logs:
                    status, retry_after, body = await post(fleet, key, "/v1/chat/completions", CHAT)
                    lines = await logs.wait_for(lambda r: r.getMessage() == "request")
                assert (status, retry_after) == (503, "1")
                assert body["error"]["code"] == "gateway_busy"
                assert lines[0].fields["outcome"] == "shed"  # type: ignore[attr-defined]
                await until(lambda: fleet.leases(key_id), 0)
                await until(lambda: fleet.requests_counted(key_id), 0)  # (it kept 1)
                held.cancel()
                await asyncio.gather(held, return_exceptions=True)
                await until(fleet.records, 1)  # the held request's (its client left) alone
                await asyncio.sleep(0.3)
                assert await fleet.records() == 1
            finally:
                await redis.aclose()
