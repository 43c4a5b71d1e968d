"""llmaas_requests_total counts every /v1 request, not only those the proxy served: refusals
(400, 401, 404, 429) and the routes the gateway answers itself, labelled by route template
(gateway/api/middleware.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL, OTHER, auth_settings
from tests.integration.sim_fixture import running_sim, wait_running
from tests.support.gateways import OPS, admin_request
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

Counts = dict[tuple[str, str, str], float]


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL, OTHER], max_tokens=2)) as sim,
        serve_asgi(create_app(auth_settings(sim, redis_url, tmp_path))) as url,
        aiohttp.ClientSession() as http,
    ):
        yield url, http


async def counts(http: aiohttp.ClientSession, gateway: str) -> Counts:
    async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
        text = await resp.text()
    found: Counts = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llmaas_requests_total":
                found[(s.labels["model"], s.labels["route"], s.labels["status"])] = s.value
    return found


async def timed(http: aiohttp.ClientSession, gateway: str) -> dict[tuple[str, str], float]:
    """llmaas_request_duration_seconds' counts, by (model, route)."""
    async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
        text = await resp.text()
    return {
        (s.labels["model"], s.labels["route"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llmaas_request_duration_seconds_count"
    }


async def test_refused_and_gateway_served_requests_are_counted_once(
    gateway: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = gateway
    status, made = await admin_request(http, url, "POST", "/keys", {"tenant": "c", "rpm": 1})
    assert status == 201, made
    key = {"authorization": f"Bearer {made['key']}"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    calls = [  # (method, path, headers, body, the status expected)
        ("POST", "/v1/chat/completions", {"authorization": "Bearer nope"}, chat, 401),
        ("POST", "/v1/chat/completions", key, {**chat, "model": "unknown"}, 404),
        ("POST", "/v1/chat/completions", key, {**chat, "messages": 5}, 400),
        ("POST", "/v1/chat/completions", key, chat, 200),
        ("POST", "/v1/chat/completions", key, chat, 429),  # rpm 1
        ("GET", "/v1/models", key, None, 200),
        ("GET", "/v1/responses/resp_unknown", key, None, 404),
        ("GET", "/v1/no/such/route", key, None, 404),
        ("GET", "/healthz", {}, None, 200),
    ]
    for method, path, headers, body, expected in calls:
        async with http.request(method, f"{url}{path}", json=body, headers=headers) as resp:
            assert resp.status == expected, (path, await resp.text())
    assert await counts(http, url) == {
        ("", "chat/completions", "401"): 1,
        ("", "chat/completions", "404"): 1,
        (MODEL, "chat/completions", "400"): 1,  # (a served model: its label, though refused)
        (MODEL, "chat/completions", "200"): 1,  # counted by the proxy, not twice
        (MODEL, "chat/completions", "429"): 1,
        ("", "models", "200"): 1,
        ("", "responses/{id}", "404"): 1,
        ("", "other", "404"): 1,
    }
    # each in the latency histogram too (found by review: only the 200 the proxy served was)
    assert await timed(http, url) == {
        ("", "chat/completions"): 2,
        (MODEL, "chat/completions"): 3,
        ("", "models"): 1,
        ("", "responses/{id}"): 1,
        ("", "other"): 1,
    }


async def test_requests_refused_before_routing_are_counted_by_their_route(tmp_path: Path) -> None:
    """A throttled address's GET /v1/models (429 before any route ran) was counted as route
    `other`, as if no route served that path; it is `models`, as its 401s were."""
    async with running_redis(None) as redis_url, running_sim(SimConfig(models=[MODEL])) as sim:
        settings = auth_settings(sim, redis_url, tmp_path)
        settings.auth.failure_limit = 1
        app = create_app(settings)
        async with serve_asgi(app) as url, aiohttp.ClientSession() as http:
            bad = {"authorization": "Bearer sk-llmaas-nope-nope"}
            for path, expected in (
                ("/v1/models", 401),
                ("/v1/models", 429),
                ("/v1/files/file-abc", 429),
                ("/v1/no/such/route", 429),
            ):
                async with http.get(f"{url}{path}", headers=bad) as resp:
                    assert resp.status == expected, (path, await resp.text())
            # (this address gets 429 on /metrics too now: the counter is read in the process)
            samples = app.state.gateway.metrics.requests.collect()[0].samples
            found = {
                (s.labels["model"], s.labels["route"], s.labels["status"]): s.value
                for s in samples
                if s.name == "llmaas_requests_total"
            }
            assert found == {
                ("", "models", "401"): 1,
                ("", "models", "429"): 1,
                ("", "files/{id}", "429"): 1,
                ("", "other", "429"): 1,
            }


async def test_requests_waiting_for_their_first_token_are_in_flight_on_their_engine(
    tmp_path: Path,
) -> None:
    """Found by review: llmaas_inflight_requests counted a request once its answer began (a
    stream's first token), so requests queued in an overloaded engine were not in it, while
    the admin API's engines view and max_connections_per_engine counted them."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=2)) as sim,
        serve_asgi(create_app(auth_settings(sim, redis_url, tmp_path))) as url,
        aiohttp.ClientSession() as http,
    ):
        status, made = await admin_request(http, url, "POST", "/keys", {"tenant": "q"})
        assert status == 201, made
        key = {"authorization": f"Bearer {made['key']}"}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        slow = {**chat, "sim": {"ttft_ms": 3000}}

        async def ask() -> int:
            async with http.post(f"{url}/v1/chat/completions", json=slow, headers=key) as resp:
                await resp.read()
                return resp.status

        asked = [asyncio.create_task(ask()) for _ in range(3)]
        await wait_running(http, sim, 3)  # each waits for its first token
        assert await in_flight(http, url) == {sim: 3}
        assert await asyncio.gather(*asked) == [200] * 3
        assert await in_flight(http, url) == {sim: 0}


async def in_flight(http: aiohttp.ClientSession, gateway: str) -> dict[str, float]:
    async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
        text = await resp.text()
    return {
        s.labels["engine"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llmaas_inflight_requests"
    }


async def test_a_fine_tuned_model_is_labelled_by_its_base_not_its_name(tmp_path: Path) -> None:
    """A fine-tuned model's name holds its tenant and the client's suffix, one more per job: it
    was the `model` label of the request counts, durations, time to first token and tokens, a
    label without bound carrying free text (DESIGN.md rules both out; found 2026-12-07). Its
    label is `ft:<base>`; the access log and the usage records keep its name."""
    tuned = f"ft:{MODEL}:acme:my-free-text:abc123"
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL, tuned], max_tokens=2)) as sim,
        serve_asgi(create_app(auth_settings(sim, redis_url, tmp_path))) as url,
        aiohttp.ClientSession() as http,
    ):
        status, made = await admin_request(http, url, "POST", "/keys", {"tenant": "acme"})
        assert status == 201, made
        key = {"authorization": f"Bearer {made['key']}"}
        chat = {"model": tuned, "messages": [{"role": "user", "content": "hi"}]}
        async with asyncio.timeout(30):
            while True:  # the engine's models learned (its first poll)
                async with http.post(f"{url}/v1/chat/completions", json=chat, headers=key) as r:
                    if r.status == 200:
                        break
                    assert r.status == 404, await r.text()
                await asyncio.sleep(0.1)
        for body in ({**chat, "stream": True}, {**chat, "messages": 5}):
            async with http.post(f"{url}/v1/chat/completions", json=body, headers=key) as resp:
                await resp.read()
        async with asyncio.timeout(10):
            while True:
                async with http.get(f"{url}/metrics", headers=OPS) as resp:
                    text = await resp.text()
                families = {f.name: f for f in text_string_to_metric_families(text)}
                tokens = families["llmaas_tokens"].samples
                if sum(s.value for s in tokens if s.labels["tenant"] == "acme") >= 4:
                    break
                await asyncio.sleep(0.05)
        found = await counts(http, url)
    labelled = [
        s
        for name in ("llmaas_requests", "llmaas_request_duration_seconds", "llmaas_tokens")
        for s in families[name].samples
        if s.labels.get("model", "").startswith("ft:")
    ]
    labelled += families["llmaas_time_to_first_token_seconds"].samples
    assert labelled
    assert {s.labels["model"] for s in labelled} == {f"ft:{MODEL}"}
    assert "my-free-text" not in text
    assert "abc123" not in text
    assert {k: v for k, v in found.items() if k[0].startswith("ft:")} == {
        (f"ft:{MODEL}", "chat/completions", "200"): 2,
        (f"ft:{MODEL}", "chat/completions", "400"): 1,
    }
