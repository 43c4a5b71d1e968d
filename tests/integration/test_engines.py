"""Engines as the gateway sees them: health and ejection, learned models, DNS discovery, and the
operators' view (GET /admin/v1/engines, `llmaas engines`). Engines are `llmaas sim` processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.netutil import free_port
from gateway.routing.discovery import Resolver
from gateway.routing.monitor import RELEARN_EVERY_S
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim, sim_state, wait_running
from tests.support.cli import run_cli
from tests.support.gateways import ADMIN_TOKEN
from tests.support.logs import collected
from tests.support.servers import serve_asgi, serve_uvicorn
from tests.support.sim_processes import SimProcess, port_free_on, sim_processes

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
FAST_ROUTING = {
    "strategy": "round_robin",
    "health_interval_s": 0.1,
    "health_timeout_s": 1.0,
    "models_refresh_s": 0.2,
    "dns_refresh_s": 0.1,
    "eject_base_s": 0.3,
    "eject_max_s": 1.0,
}


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    models: list[dict[str, Any]],
    resolver: Resolver | None = None,
    upstream: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    settings = Settings.model_validate(
        {
            "models": models,
            "routing": {**FAST_ROUTING, **(routing or {})},
            "admin_token": ADMIN_TOKEN,
            "auth": {"required": False},
            "metering": {"spill_dir": str(tmp_path / "spill")},
            "upstream": upstream or {},
        }
    )
    async with serve_asgi(create_app(settings, resolver=resolver)) as url:
        yield url


async def engines(http: aiohttp.ClientSession, gw: str) -> dict[str, dict[str, Any]]:
    async with http.get(f"{gw}/admin/v1/engines", headers=ADMIN) as resp:
        assert resp.status == 200
        return {e["url"]: e for e in (await resp.json())["data"]}


async def until(
    http: aiohttp.ClientSession,
    gw: str,
    done: Callable[[dict[str, dict[str, Any]]], bool],
    deadline_s: float = 10.0,
) -> dict[str, dict[str, Any]]:
    """Poll /admin/v1/engines until `done` holds for it; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not done(seen := await engines(http, gw)):
        assert time.monotonic() < deadline, json.dumps(seen, indent=1)
        await asyncio.sleep(0.05)
    return seen


async def complete(
    http: aiohttp.ClientSession, gw: str, model: str, sim: dict[str, Any] | None = None
) -> None:
    body: dict[str, Any] = {"model": model, "prompt": "hello", "max_tokens": 2}
    if sim is not None:
        body["sim"] = sim
    async with http.post(f"{gw}/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def served(http: aiohttp.ClientSession, sim: SimProcess) -> int:
    return int((await sim_state(http, sim.url))["total_requests"])


async def connect_errors(http: aiohttp.ClientSession, gw: str, sim: SimProcess) -> float:
    """The gateway's llmaas_upstream_errors_total for refused connections to `sim`."""
    async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    sample = f'llmaas_upstream_errors_total{{engine="{sim.url}",kind="connect"}} '
    lines = [line for line in text.splitlines() if line.startswith(sample)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def metrics_text(http: aiohttp.ClientSession, gw: str) -> str:
    async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
        return await resp.text()


async def test_a_killed_engine_is_ejected_and_used_again_once_it_answers_health(
    tmp_path: Path,
) -> None:
    a, b = SimProcess(("m",)), SimProcess(("m",))
    async with (
        sim_processes(a, b),
        gateway(tmp_path, [{"name": "m", "engines": [a.url, b.url]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        with collected("llmaas.routing") as logs:
            await until(http, gw, lambda e: e[a.url]["state"] == e[b.url]["state"] == "up")
            await a.kill()
            seen = await until(http, gw, lambda e: e[a.url]["state"] != "up")
            assert seen[a.url]["ejections"] == 1
            assert seen[a.url]["recent_errors"][-1]["kind"] == "connect"
            assert seen[b.url]["state"] == "up"
            before, refused = await served(http, b), await connect_errors(http, gw, a)
            for _ in range(6):
                await complete(http, gw, "m")
            assert await served(http, b) == before + 6
            assert await connect_errors(http, gw, a) == refused  # the ejected one was not tried

            async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
                text = await resp.text()
            assert f'llmaas_engine_up{{engine="{a.url}"}} 0.0' in text
            assert f'llmaas_engine_ejections_total{{engine="{a.url}"}} 1.0' in text
            answered = f'llmaas_engine_requests_total{{engine="{b.url}",status="200"}} '
            assert any(line.startswith(answered) for line in text.splitlines())

            failed = f'llmaas_engine_check_failures_total{{check="models",engine="{a.url}"}}'
            for _ in range(200):  # until the models poll saw it down too
                if failed in await metrics_text(http, gw):
                    break
                await asyncio.sleep(0.05)
            await a.start()  # the same port; a fresh process, so its counters start at 0
            seen = await until(http, gw, lambda e: e[a.url]["state"] == "up")
            # Each check that said it failed says once that it works again (the load scrape may
            # not have run while the engine was down: then it says neither).
            said = [r.getMessage() for r in logs.records]
            failed_checks = [
                c
                for c in ("models poll", "load scrape")
                if f"{c} of {a.url} failed" in " ".join(said)
            ]
            assert "models poll" in failed_checks
            for check in failed_checks:
                again = f"{check} of {a.url} works again"
                await logs.wait_for(lambda r, again=again: r.getMessage() == again)  # type: ignore[misc]
            assert seen[a.url]["consecutive_failures"] == 0
            for _ in range(6):
                await complete(http, gw, "m")
            assert await served(http, a) == 3


async def test_a_model_an_engine_lists_is_listed_and_routed_to_that_engine(
    tmp_path: Path,
) -> None:
    a, b = SimProcess(("m",)), SimProcess(("m", "extra"))
    async with (
        sim_processes(a, b),
        gateway(tmp_path, [{"name": "m", "engines": [a.url, b.url]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{gw}/v1/models") as resp:
            listed = {card["id"]: card for card in (await resp.json())["data"]}
        assert sorted(listed) == ["extra", "m"]
        assert listed["extra"]["max_model_len"] == 2048  # the simulator's max_model_len
        async with http.get(f"{gw}/v1/models/extra") as resp:
            assert resp.status == 200
        for _ in range(4):
            await complete(http, gw, "extra")
        assert await served(http, b) == 4
        assert await served(http, a) == 0
        assert (await sim_state(http, b.url))["last_request"]["body"]["model"] == "extra"
        seen = await engines(http, gw)
        assert seen[b.url]["models"] == ["m", "extra"]
        assert seen[b.url]["served"] == ["m", "extra"]
        assert seen[a.url]["models"] == ["m"]


async def test_an_engine_that_forgot_a_model_since_the_last_poll_is_passed_over(
    tmp_path: Path,
) -> None:
    """An engine restarts without an adapter it listed (vLLM forgets adapters loaded at run
    time): until the next models poll the gateway still routes the adapter there. Its 404
    "does not exist" moves the request to the next engine (the client got it before, though
    another engine served the model), and that engine's models are polled again at once."""
    a, b = SimProcess(("m", "extra")), SimProcess(("m", "extra"))
    async with (
        sim_processes(a, b),
        gateway(
            tmp_path,
            [{"name": "m", "engines": [a.url, b.url]}],
            routing={"models_refresh_s": 3600},  # no poll during the test but the first
        ) as gw,
        aiohttp.ClientSession() as http,
    ):
        await b.kill()
        await until(http, gw, lambda e: e[b.url]["state"] != "up")
        restarted = SimProcess(("m",), port=b.port)
        try:
            await restarted.start()
            seen = await until(http, gw, lambda e: e[b.url]["state"] == "up")
            assert seen[b.url]["served"] == ["m", "extra"]  # what it listed before
            for _ in range(4):
                await complete(http, gw, "extra")
            assert await served(http, a) == 4
            seen = await until(http, gw, lambda e: e[b.url]["served"] == ["m"])
            assert seen[b.url]["state"] == "up"  # not a failure of the engine
            assert seen[b.url]["ejections"] == 1  # the restart's only
            # Any other 404 is the engine's answer, relayed as it was and not tried elsewhere.
            before = await served(http, a) + await served(http, restarted)
            body = {"model": "m", "prompt": "hi", "sim": {"fail_status": 404, "fail_message": "x"}}
            async with http.post(f"{gw}/v1/completions", json=body) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["message"] == "x"
            assert await served(http, a) + await served(http, restarted) == before + 1
        finally:
            await restarted.kill()


class Hosts:
    """A test resolver: the addresses each name has right now."""

    def __init__(self, **names: list[str]) -> None:
        self.names = names

    async def resolve(self, host: str) -> list[str]:
        if host not in self.names:
            raise OSError(f"{host}: no such host")
        return list(self.names[host])


async def test_dns_addresses_that_come_and_go_change_the_pool(tmp_path: Path) -> None:
    port = port_free_on("127.0.0.2", "127.0.0.3")
    two, three = (SimProcess(("m",), host, port) for host in ("127.0.0.2", "127.0.0.3"))
    hosts = Hosts(**{"engines.test": ["127.0.0.2"]})
    models = [{"name": "m", "engines": [f"dns://engines.test:{port}"]}]
    async with (
        sim_processes(two, three),
        gateway(tmp_path, models, resolver=hosts) as gw,
        aiohttp.ClientSession() as http,
    ):
        assert list(await engines(http, gw)) == [two.url]
        slow = asyncio.create_task(complete(http, gw, "m", sim={"ttft_ms": 1000}))
        await wait_running(http, two.url, 1)

        hosts.names["engines.test"] = ["127.0.0.3"]  # .2 leaves while its request runs
        await until(http, gw, lambda e: list(e) == [three.url])
        await complete(http, gw, "m")
        assert await served(http, three) == 1
        await slow  # the request in flight on the engine that left finished normally
        assert await served(http, two) == 1

        hosts.names["engines.test"] = ["127.0.0.3", "127.0.0.2"]
        seen = await until(http, gw, lambda e: len(e) == 2)
        assert {e["source"] for e in seen.values()} == {f"dns://engines.test:{port}"}
        for _ in range(4):
            await complete(http, gw, "m")
        assert (await served(http, two), await served(http, three)) == (3, 3)


async def test_a_model_left_without_engines_says_so_in_metrics(tmp_path: Path) -> None:
    """Found 2026-12-07: an engine that leaves DNS (a crashed or unready pod: the headless
    Service lists Ready pods only) takes every series of its own with it, so LlmaasEngineDown
    never fired and no metric said the model had no engine left; and its stream_cut series
    appeared at the first cut, already 1, which rate() does not count."""
    port = port_free_on("127.0.0.2")
    two = SimProcess(("m",), "127.0.0.2", port)
    hosts = Hosts(**{"engines.test": ["127.0.0.2"]})
    models = [
        {"name": "m", "engines": [f"dns://engines.test:{port}"]},
        {"name": "dead", "engines": [f"http://127.0.0.1:{free_port()}"]},  # nothing listens
    ]
    async with (
        sim_processes(two),
        gateway(tmp_path, models, resolver=hosts) as gw,
        aiohttp.ClientSession() as http,
    ):
        up = await metric_until(http, gw, 'llmaas_model_engines_up{model="m"}', "1.0")
        for kind in ("stream_cut", "stream_timeout"):
            assert f'llmaas_upstream_errors_total{{engine="{two.url}",kind="{kind}"}} 0.0' in up
        await metric_until(http, gw, 'llmaas_model_engines_up{model="dead"}', "0.0")  # ejected

        hosts.names["engines.test"] = []  # its only pod is gone from DNS
        gone = await metric_until(http, gw, 'llmaas_model_engines_up{model="m"}', "0.0")
        assert two.url not in gone  # (its own series went with it)


async def metric_until(
    http: aiohttp.ClientSession, gw: str, series: str, value: str, deadline_s: float = 20.0
) -> str:
    """/metrics once `series` has `value` there; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while f"\n{series} {value}\n" not in (text := await metrics_text(http, gw)):
        assert time.monotonic() < deadline, f"{series} is not {value}:\n{text}"
        await asyncio.sleep(0.05)
    return text


async def test_an_engine_that_does_not_list_its_configured_model_is_logged(
    tmp_path: Path,
) -> None:
    """A config naming a model its engine does not serve (a typo on either side): every
    request gets the engine's 404; the log says why at the first models poll, and the model
    counts no engine up (found 2026-12-07: the engine counted, so LlmaasModelWithoutEngines
    never fired for a model whose every request failed)."""
    other = SimProcess(("m",))
    models = [{"name": "typo", "engines": [other.url]}, {"name": "m", "engines": [other.url]}]
    with collected("llmaas.routing") as logs:
        async with (
            sim_processes(other),
            gateway(tmp_path, models) as gw,
            aiohttp.ClientSession() as http,
        ):
            found = await logs.wait_for(lambda r: "is configured for model typo" in r.getMessage())
            await metric_until(http, gw, 'llmaas_model_engines_up{model="m"}', "1.0")
            await metric_until(http, gw, 'llmaas_model_engines_up{model="typo"}', "0.0")
            headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            async with http.get(f"{gw}/readyz", headers=headers) as resp:
                assert (await resp.json())["models"] == {"m": True, "typo": False}  # (as it)
            async with openai.AsyncOpenAI(base_url=f"{gw}/v1", api_key="x") as oai:
                with pytest.raises(openai.NotFoundError) as info:
                    await oai.completions.create(model="typo", prompt="hi", max_tokens=1)
    assert info.value.body == {  # as the gateway's own 404 says it, naming no other model
        "message": "The model 'typo' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert (
        found[0]
        .getMessage()
        .startswith(f"engine {other.url} is configured for model typo but lists ['m']")
    )


async def test_a_model_whose_dns_name_resolves_to_nothing_is_unavailable_not_busy(
    tmp_path: Path,
) -> None:
    """No engine at all (a name that does not resolve yet) is 503 engine_unavailable, what a
    dead engine gets: gateway_busy would send an operator to add gateway replicas."""
    models = [{"name": "m", "engines": ["dns://nowhere.test:8000"]}]
    async with (
        gateway(tmp_path, models, resolver=Hosts()) as gw,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": "m", "prompt": "hello", "max_tokens": 2}
        async with http.post(f"{gw}/v1/completions", json=body) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "engine_unavailable"
        async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
            assert "\nllmaas_gateway_busy_total 0.0\n" in await resp.text()


async def test_an_engine_answering_5xx_to_every_request_is_ejected(tmp_path: Path) -> None:
    """3 failures in a row eject an engine: the 5xx answers each request's failover hides from
    the client count, whose headers came (they used to start the count again at once)."""
    failing = SimConfig(models=["m"], fail_rate=1.0, fail_status=500)
    good = SimProcess(("m",))
    async with (
        running_sim(failing) as bad,
        sim_processes(good),
        gateway(tmp_path, [{"name": "m", "engines": [bad, good.url]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        with collected("llmaas.routing") as logs:
            for _ in range(6):  # round robin: 3 tried on the failing engine first, failed over
                await complete(http, gw, "m")
        seen = await engines(http, gw)
        assert seen[bad]["ejections"] >= 1, seen[bad]
        assert seen[good.url]["ejections"] == 0
        assert await served(http, good) == 6
    said = [r.getMessage() for r in logs.records]
    assert (
        f"engine {bad} ejected for 0.3s (ejection 1, 3 failures in a row; last: http_5xx: "
        "status 500)" in said
    ), said


@asynccontextmanager
async def one_engine(
    tmp_path: Path, response_timeout_s: float
) -> AsyncIterator[tuple[SimProcess, str, aiohttp.ClientSession]]:
    """Model m on one simulator, behind a gateway with this upstream.response_timeout_s."""
    engine = SimProcess(("m",))
    upstream = {"response_timeout_s": response_timeout_s}
    async with (
        sim_processes(engine),
        gateway(tmp_path, [{"name": "m", "engines": [engine.url]}], upstream=upstream) as gw,
        aiohttp.ClientSession() as http,
    ):
        yield engine, gw, http


async def test_an_engine_whose_answers_time_out_is_ejected(tmp_path: Path) -> None:
    """Headers, then nothing within the timeout, three times in a row: ejected. A 504 each."""
    async with one_engine(tmp_path, 0.3) as (slow, gw, http):
        body = {"model": "m", "prompt": "hello", "max_tokens": 2, "sim": {"ttft_ms": 2000}}
        for _ in range(3):
            async with http.post(f"{gw}/v1/completions", json=body) as resp:
                assert resp.status == 504
                assert (await resp.json())["error"]["code"] == "engine_timeout"
        seen = await engines(http, gw)
        assert seen[slow.url]["ejections"] == 1, seen[slow.url]


async def test_a_non_streaming_answer_is_cut_at_response_timeout_s_however_it_flows(
    tmp_path: Path,
) -> None:
    """upstream.response_timeout_s bounds a whole non-streaming answer, which the gateway
    reads from the engine as a stream: tokens that keep coming do not stretch it, nor count
    against the engine."""
    async with one_engine(tmp_path, 0.5) as (engine, gw, http):
        body = {"model": "m", "prompt": "hello", "max_tokens": 40, "sim": {"itl_ms": 100}}
        started = time.monotonic()
        async with http.post(f"{gw}/v1/completions", json=body) as resp:
            assert resp.status == 504
            error = (await resp.json())["error"]
        assert error["code"] == "engine_timeout"
        assert error["message"] == "The engine did not finish its answer within 0.5s."
        assert time.monotonic() - started < 4  # not the 4 s the 40 tokens take
        for _ in range(2):  # three in all: an engine that sends nothing would be ejected now
            async with http.post(f"{gw}/v1/completions", json=body) as resp:
                assert resp.status == 504
        await until(http, gw, lambda e: e[engine.url]["inflight"] == 0)
        seen = (await engines(http, gw))[engine.url]
        # It generated all along: the answer asked for outlasts the deadline, the request's
        # doing. Counted against the engine, three such ejected a healthy engine.
        assert (seen["state"], seen["consecutive_failures"], seen["ejections"]) == ("up", 0, 0), (
            seen
        )


async def test_llmaas_engines_shows_every_engine(tmp_path: Path) -> None:
    code, out, _ = await run_cli("engines", "--help")
    assert code == 0
    assert out.startswith("usage: llmaas engines ")
    assert all(option in out for option in ("--url", "--admin-token", "--json"))

    a = SimProcess(("m", "extra"))
    dead = SimProcess(("m",))  # never started: refused connections
    async with (
        sim_processes(a),
        gateway(tmp_path, [{"name": "m", "engines": [a.url, dead.url]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        await until(http, gw, lambda e: e[dead.url]["state"] != "up")
        admin = ("--url", gw, "--admin-token", ADMIN_TOKEN)
        code, out, err = await run_cli("engines", *admin)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == [
            "url", "state", "failures", "ejections", "ejected_until", "inflight", "running",
            "waiting", "kv_usage", "models", "adapters", "last_error",
        ]  # fmt: skip
        by_url = {row.split()[0]: row.split() for row in rows}
        assert by_url[a.url][1:4] == ["up", "0", "0"]
        assert by_url[a.url][9] == "m,extra"
        assert by_url[dead.url][1] in ("ejected", "probing")
        assert int(by_url[dead.url][3]) >= 1  # ejected at least once
        assert by_url[dead.url][-1] == "connect"

        code, out, err = await run_cli("engines", "--json", *admin)
        assert code == 0, err
        data = {e["url"]: e for e in json.loads(out)["data"]}
        assert set(data[a.url]["load"]) == {
            "running", "waiting", "kv_usage", "prefix_hits", "prefix_queries", "scraped_at",
            "fresh",
        }  # fmt: skip
        assert data[dead.url]["consecutive_failures"] >= 1

        code, _, err = await run_cli(
            "engines", "--url", gw, "--admin-token", "wrong-token-0123456789"
        )
        assert code == 1
        assert "HTTP 401" in err


async def test_the_engines_endpoint_needs_the_admin_token(tmp_path: Path) -> None:
    async with (
        gateway(tmp_path, [{"name": "m", "engines": ["http://127.0.0.1:9"]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        for headers in ({}, {"authorization": "Bearer not-the-token"}):
            async with http.get(f"{gw}/admin/v1/engines", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["type"]


def odd_engine() -> Starlette:
    """An engine that answers nonsense: /health 503, /v1/models not JSON."""

    async def health(_: Request) -> Response:
        return Response(b"busy", status_code=503)

    async def models(_: Request) -> Response:
        return Response(b"<html>not json", media_type="application/json")

    return Starlette(routes=[Route("/health", health), Route("/v1/models", models)])


async def test_an_engine_answering_nonsense_is_counted_and_ejected_not_fatal(
    tmp_path: Path,
) -> None:
    config = uvicorn.Config(odd_engine(), host="127.0.0.1", port=free_port(), loop="none",
                            log_level="warning", lifespan="off")  # fmt: skip
    a = SimProcess(("m",))
    async with (
        sim_processes(a),
        serve_uvicorn(config) as odd,
        gateway(tmp_path, [{"name": "m", "engines": [a.url, odd]}]) as gw,
        aiohttp.ClientSession() as http,
    ):
        seen = await until(http, gw, lambda e: e[odd]["state"] != "up")
        assert seen[odd]["recent_errors"][-1] == {
            "at": seen[odd]["recent_errors"][-1]["at"],
            "kind": "health",
            "detail": "/health answered 503",
        }
        assert seen[odd]["served"] == []
        async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
            text = await resp.text()
        assert f'llmaas_engine_check_failures_total{{check="models",engine="{odd}"}}' in text
        await complete(http, gw, "m")
        async with http.get(f"{gw}/v1/models") as resp:
            assert [card["id"] for card in (await resp.json())["data"]] == ["m"]


def engine_without(model: str, polls: list[float]) -> Starlette:
    """An engine that lists `model` but refuses it as vLLM refuses a model it does not serve;
    `polls` gets the time of every GET /v1/models."""

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        polls.append(time.monotonic())
        cards = [{"id": model, "object": "model", "max_model_len": 2048}]
        return Response(
            json.dumps({"object": "list", "data": cards}), media_type="application/json"
        )

    async def refuse(_: Request) -> Response:
        error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                 "param": "model", "code": 404}  # fmt: skip
        return Response(json.dumps({"error": error}), 404, media_type="application/json")

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", refuse, methods=["POST"])]  # fmt: skip
    return Starlette(routes=routes)


async def test_an_engine_refusing_a_model_it_lists_is_polled_again_at_most_every_second(
    tmp_path: Path,
) -> None:
    """Each 404 'does not exist' asks the engine's /v1/models again; an engine that goes on
    listing the model and refusing it (a broken engine) is not polled once per request."""
    polls: list[float] = []
    config = uvicorn.Config(engine_without("m", polls), host="127.0.0.1", port=free_port(),
                            loop="none", log_level="warning", lifespan="off")  # fmt: skip
    a = SimProcess(("m",))
    async with (
        sim_processes(a),
        serve_uvicorn(config) as broken,
        gateway(
            tmp_path,
            [{"name": "m", "engines": [broken, a.url]}],
            routing={"models_refresh_s": 3600},
        ) as gw,  # fmt: skip
        aiohttp.ClientSession() as http,
    ):
        started, first = time.monotonic(), len(polls)
        for _ in range(20):  # round robin: 10 of them tried on the broken engine first
            await complete(http, gw, "m")
        elapsed = time.monotonic() - started
        assert await served(http, a) == 20
        assert 1 <= len(polls) - first <= 1 + elapsed / RELEARN_EVERY_S, (len(polls), elapsed)
