"""Liveness, readiness and logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.logs import ACCESS_LOGGER, JsonFormatter
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import DEAD_MODEL, MODEL, Stack
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import ADMIN_TOKEN, OPS
from tests.support.logs import collected
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_healthz(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def ready(
    http: aiohttp.ClientSession, gateway: str, down: tuple[str, ...] = (), within_s: float = 10
) -> Any:
    """(status, body) of /readyz, with its detail (the admin token), once the health checks
    have found the `down` engines down."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        async with http.get(f"{gateway}/readyz", headers=OPS) as resp:
            status, body = resp.status, await resp.json()
        settled = not any(body["engines"].get(url) for url in down)
        if settled or asyncio.get_running_loop().time() > deadline:
            return status, body
        await asyncio.sleep(0.1)


async def test_readyz_names_a_model_whose_engines_are_down_and_stays_ready(stack: Stack) -> None:
    dead = [
        url for url in (await ready(stack.http, stack.gateway))[1]["engines"] if url != stack.sim
    ]
    status, body = await ready(stack.http, stack.gateway, tuple(dead))
    assert (status, body["status"]) == (200, "ready")  # one model down takes no replica out
    assert body["models"] == {MODEL: True, DEAD_MODEL: False}
    assert body["redis"] == "not_configured"


async def test_readyz_stays_ready_when_no_engine_is_up_or_redis_is_gone(tmp_path: Path) -> None:
    """What every replica shares takes none out of its Service (all would go at once, and
    clients would meet the load balancer's error page instead of the gateway's 503s): the
    detail says what is down."""
    dead = f"http://127.0.0.1:{free_port()}"
    gone = f"redis://127.0.0.1:{free_port()}/0"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"models": [{"name": DEAD_MODEL, "engines": [dead]}]}, 200, "not_configured"),
        ({"redis_url": gone}, 200, "unreachable"),
        ({"redis_url": gone, "limits": {"failure_mode": "open"}}, 200, "unreachable"),
    ]
    async with (
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        for overrides, expected, redis in cases:
            settings: dict[str, Any] = {
                "models": [{"name": MODEL, "engines": [sim]}],
                "admin_token": ADMIN_TOKEN,
                "auth": {"required": False},
                "metering": {"spill_dir": str(tmp_path / "spill")},
                **overrides,
            }
            app = create_app(Settings.model_validate(settings))
            async with serve_asgi(app) as gateway:
                status, body = await ready(http, gateway, (dead,))
            assert (status, body["redis"]) == (expected, redis), (overrides, body)
            assert body["status"] == "ready"
            if "models" in overrides:
                assert body["models"] == {DEAD_MODEL: False}
                assert body["engines"] == {dead: False}


async def test_readyz_tells_a_redis_that_refuses_writes_and_stays_ready(tmp_path: Path) -> None:
    """Found by review: the detail said "redis":"ok" (PING answered) while Redis refused every
    write (maxmemory, NOREPLICAS, READONLY): every limited request was a 503 and every
    settlement waited. It now probes with a write and names the refusal in Redis's words."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        settings = {
            "models": [{"name": MODEL, "engines": [sim]}],
            "redis_url": redis_url,
            "admin_token": ADMIN_TOKEN,
            "auth": {"required": False},
            "metering": {"spill_dir": str(tmp_path / "spill")},
        }
        redis = Redis.from_url(redis_url)
        try:
            async with serve_asgi(create_app(Settings.model_validate(settings))) as gateway:
                assert (await ready(http, gateway))[1]["redis"] == "ok"
                await redis.config_set("min-replicas-to-write", "1")
                try:
                    status, body = await ready(http, gateway)
                finally:
                    await redis.config_set("min-replicas-to-write", "0")
                assert (status, body["status"]) == (200, "ready")
                assert body["redis"] == "refusing_writes"
                assert "NOREPLICAS" in body["redis_error"]
                after = (await ready(http, gateway))[1]
                assert (after["redis"], "redis_error" in after) == ("ok", False)
        finally:
            await redis.aclose()


async def test_access_log_is_json_with_request_id_and_no_prompt(stack: Stack) -> None:
    secret_prompt = "my-very-private-prompt-text"
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret_prompt}]}
    with collected(ACCESS_LOGGER) as collect:
        async with stack.http.post(
            f"{stack.gateway}/v1/chat/completions", json=body, headers={"x-request-id": "log-1"}
        ) as resp:
            assert resp.status == 200
            await resp.read()
        records = await collect.wait_for(
            lambda r: getattr(r, "fields", {}).get("request_id") == "log-1"
        )
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert '"request_id":"log-1"' in line
    engine_id = getattr(records[0], "fields", {})["engine_request_id"]  # what the engine logs
    assert f'"engine_request_id":"{engine_id}"' in line
    assert (await stack.sim_state())["last_request"]["headers"]["x-request-id"] == engine_id
    assert '"status":200' in line
    assert f'"model":"{MODEL}"' in line
    assert '"outcome":"ok"' in line
    assert secret_prompt not in line
    with collected(ACCESS_LOGGER) as collect:  # answered by the gateway alone: was "ok"
        unknown = {**body, "model": "no-such-model"}
        headers = {"x-request-id": "log-2"}
        async with stack.http.post(
            f"{stack.gateway}/v1/chat/completions", json=unknown, headers=headers
        ) as resp:
            assert resp.status == 404
        (refused,) = await collect.wait_for(
            lambda r: getattr(r, "fields", {}).get("request_id") == "log-2"
        )
    assert getattr(refused, "fields", {})["outcome"] == "refused"
    with collected(ACCESS_LOGGER) as collect:  # gone before the answer began: was status 0
        late = {**body, "sim": {"ttft_ms": 3000}}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async with stack.http.post(
                    f"{stack.gateway}/v1/chat/completions",
                    json=late,
                    headers={"x-request-id": "log-3"},
                ) as resp:
                    await resp.read()
        (left,) = await collect.wait_for(
            lambda r: getattr(r, "fields", {}).get("request_id") == "log-3"
        )
    fields = getattr(left, "fields", {})
    assert (fields["status"], fields["outcome"]) == (499, "client_disconnected")
    with collected(ACCESS_LOGGER) as collect:  # gone midway: was 200, where it was counted 499
        streamed = {**body, "stream": True, "max_tokens": 50, "sim": {"itl_ms": 50}}
        async with stack.http.post(
            f"{stack.gateway}/v1/chat/completions",
            json=streamed,
            headers={"x-request-id": "log-4"},
        ) as resp:
            assert resp.status == 200
            await resp.content.readline()  # the first frame's line, then gone
        (cut,) = await collect.wait_for(
            lambda r: getattr(r, "fields", {}).get("request_id") == "log-4"
        )
    fields = getattr(cut, "fields", {})
    assert (fields["status"], fields["outcome"]) == (499, "client_disconnected")


async def test_probes_answered_well_stay_out_of_the_access_log_unless_asked(
    tmp_path: Path,
) -> None:
    """Every kubelet probe and Prometheus scrape was an access log line; answered well they
    are left out by default (access_log_probes: true logs them), a failing one never is."""
    probes = [("/healthz", {}), ("/readyz", {}), ("/metrics", OPS)]
    async with running_sim(SimConfig(models=[MODEL])) as sim, aiohttp.ClientSession() as http:
        for logged in (False, True):
            settings = Settings.model_validate(
                {
                    "models": [{"name": MODEL, "engines": [sim]}],
                    "admin_token": ADMIN_TOKEN,
                    "auth": {"required": False},
                    "metering": {"spill_dir": str(tmp_path / "spill")},
                    "access_log": True,
                    **({"access_log_probes": True} if logged else {}),
                }
            )
            with collected(ACCESS_LOGGER) as collect:
                async with serve_asgi(create_app(settings)) as gateway:
                    for path, headers in [*probes, ("/metrics", {}), ("/v1/models", {})]:
                        rid = {"x-request-id": f"{path}-{bool(headers)}"}
                        async with http.get(f"{gateway}{path}", headers={**headers, **rid}):
                            pass
                    await collect.wait_for(lambda r: _field(r, "path") == "/v1/models")
            seen = {(_field(r, "path"), _field(r, "status")) for r in collect.records}
            assert ("/metrics", 401) in seen  # a scrape without its token: always logged
            assert ("/v1/models", 200) in seen
            answered_well = {("/healthz", 200), ("/readyz", 200), ("/metrics", 200)}
            assert answered_well & seen == (answered_well if logged else set()), seen


def _field(record: logging.LogRecord, name: str) -> Any:
    return getattr(record, "fields", {}).get(name)
