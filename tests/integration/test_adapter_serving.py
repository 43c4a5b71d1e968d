"""AdapterServing.load_on (gateway/finetune/serving.py): a fine-tuned model put back on an
engine that restarted and forgot it. A burst of requests refused by that engine loads the
adapter there once, not once per request; a refusal after that load loads it again; a
model that is gone is a 404. Against a real Redis and a stand-in engine's LoRA route (the
simulator has none; the real case, vLLM killed under `llmaas up`, is tests/e2e/test_up_e2e.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.embedded.redis_server import running_redis
from gateway.errors import ModelNotFound, ServiceUnavailable
from gateway.finetune.job_store import JobStore
from gateway.finetune.serving import AdapterServing
from gateway.routing.engines import Engine, EngineRegistry
from gateway.settings import ModelRoute
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "ft:base:acme::job1"


@dataclass(frozen=True, slots=True)
class StandIn:
    serving: AdapterServing
    store: JobStore  # holding MODEL, an adapter of the tenant "acme"
    engine: Engine  # the stand-in engine's LoRA routes


@asynccontextmanager
async def stand_in(
    routes: list[Route],
    learn: Callable[[Engine], Awaitable[None]] | None = None,
    registry: EngineRegistry | None = None,
) -> AsyncIterator[StandIn]:
    """A real Redis holding MODEL's record, a stand-in engine serving `routes`, and the
    AdapterServing that loads adapters on it (`registry`: the engines it may load them into;
    none by default)."""

    async def learned_nothing(engine: Engine) -> None:
        pass

    async with (
        running_redis(None) as redis_url,
        serve_asgi(Starlette(routes=routes), lifespan="off") as url,
        aiohttp.ClientSession() as http,
    ):
        redis = Redis.from_url(redis_url)
        try:
            store = JobStore(redis)
            await store.put_model("acme", MODEL, {"base": "base", "adapter": "/adapters/job1"})
            engines = registry or EngineRegistry([])
            serving = AdapterServing(engines, redis, http, learn or learned_nothing)
            yield StandIn(serving, store, Engine(url))
        finally:
            await redis.aclose()


async def test_a_burst_refused_by_a_restarted_engine_loads_the_adapter_once() -> None:
    loads: list[dict[str, Any]] = []
    learned: list[str] = []

    async def load_lora_adapter(request: Request) -> JSONResponse:
        loads.append(await request.json())
        await asyncio.sleep(0.2)  # the burst's other requests queue behind this load
        return JSONResponse("Success: LoRA adapter loaded.")

    async def learn(engine: Engine) -> None:
        learned.append(engine.url)

    routes = [Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"])]
    async with stand_in(routes, learn) as it:
        serving, engine = it.serving, it.engine
        await asyncio.gather(*(serving.load_on("acme", MODEL, engine) for _ in range(8)))
        assert [load["lora_name"] for load in loads] == [MODEL]
        assert (loads[0]["lora_path"], learned) == ("/adapters/job1", [engine.url])
        await serving.load_on("acme", MODEL, engine)  # refused after that load: again
        assert len(loads) == 2
        with pytest.raises(ModelNotFound):
            await serving.load_on("acme", "ft:base:acme::gone", engine)


async def test_a_model_deleted_while_it_loads_is_not_left_served() -> None:
    """Another replica deletes the model as this one loads it: that delete's unload may reach
    the engine before the load does, so the load is undone here (it stayed served, and
    listed, until the engine restarted)."""
    calls: list[str] = []
    loading_now, deleted = asyncio.Event(), asyncio.Event()

    async def load_lora_adapter(request: Request) -> JSONResponse:
        calls.append("load")
        loading_now.set()
        await deleted.wait()  # the delete happens while this load runs
        return JSONResponse("Success: LoRA adapter loaded.")

    async def unload_lora_adapter(request: Request) -> JSONResponse:
        calls.append("unload")
        return JSONResponse("Success: LoRA adapter unloaded.")

    routes = [
        Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
    ]
    async with stand_in(routes) as it:
        loading = asyncio.create_task(it.serving.load_on("acme", MODEL, it.engine))
        await asyncio.wait_for(loading_now.wait(), 5)
        assert await it.store.delete_model("acme", MODEL)
        deleted.set()
        with pytest.raises(ModelNotFound):
            await loading
        assert calls == ["load", "unload"]


async def test_an_engine_that_cannot_load_an_adapter_again_is_not_named_to_the_tenant() -> None:
    """The 503 said "http://10.0.3.7:8000 could not load it again": an engine's address is the
    operator's (usage records leave it out too); the gateway's log names it."""

    async def load_lora_adapter(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "no room"}}, status_code=500)

    async with stand_in(
        [Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"])]
    ) as it:
        with pytest.raises(ServiceUnavailable) as refused:
            await it.serving.load_on("acme", MODEL, it.engine)
        assert refused.value.code == "model_unavailable"
        assert "its engine could not load it again" in refused.value.message
        assert it.engine.url.split("//")[1] not in refused.value.message


async def test_a_model_whose_base_has_no_engine_up_is_engine_unavailable() -> None:
    """The base model's only engine is down: no load was tried, and the 503 said "no engine of
    its base model could load it" as `model_unavailable`, with an empty warning in the log
    (found 2026-12-07). It is the proxy's `engine_unavailable`, as for the base model."""
    loads: list[Any] = []

    async def load_lora_adapter(request: Request) -> JSONResponse:
        loads.append(await request.json())
        return JSONResponse("Success: LoRA adapter loaded.")

    routes = [Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"])]
    async with serve_asgi(Starlette(routes=routes), lifespan="off") as url:
        registry = EngineRegistry([ModelRoute(name="base", engines=[url])], learn_models=False)
        async with stand_in([], registry=registry) as it:
            (engine,) = registry.engines()
            engine.mark_down()
            with pytest.raises(ServiceUnavailable) as refused:
                await it.serving.pool("acme", MODEL)
            assert (refused.value.code, refused.value.headers) == (
                "engine_unavailable",
                {"retry-after": "1"},
            )
            assert loads == []
            engine.probe_ok(time.monotonic() + 3600)  # its /health answers after the back-off
            await it.serving.pool("acme", MODEL)  # (the stand-in's models poll learns nothing)
            assert [load["lora_name"] for load in loads] == [MODEL]
