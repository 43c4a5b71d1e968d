"""An engine that answers it does not serve the model (a fine-tuned model's adapter, forgotten
by a restart the models poll has not seen yet), when it is the last engine to try: with a
`reload` the model is put back on it and the request sent there once more; the `reload`'s
refusal is the answer; a second "does not exist" is relayed, never a loop. Through
`Upstream.open` against `llmaas sim` processes; the real case (vLLM killed under `llmaas up`,
its fine-tuned model asked again) is tests/e2e/test_up_e2e.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.errors import ServiceUnavailable
from gateway.metrics import Metrics
from gateway.proxy.upstream import Upstream
from gateway.routing.engines import Engine
from gateway.settings import UpstreamSettings
from tests.support.sim_processes import SimProcess, sim_processes

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = orjson.dumps({"model": "ft:extra", "prompt": "hi", "max_tokens": 2})
JSON = {"content-type": "application/json"}


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(UpstreamSettings(), Metrics())
    await client.start()
    yield client
    await client.close()


async def test_the_model_is_put_back_and_the_request_sent_again(upstream: Upstream) -> None:
    forgot = SimProcess(("base",))  # restarted: the adapter it served is gone
    async with sim_processes(forgot):
        engine = Engine(forgot.url)
        reloaded: list[str] = []

        async def reload(on: Engine) -> None:  # as a load_lora_adapter would: it serves it now
            reloaded.append(on.url)
            await forgot.kill()
            forgot.models = ("base", "ft:extra")
            await forgot.start()

        chosen, resp = await upstream.open(
            [engine], "/v1/completions", BODY, JSON, False, reload=reload
        )
        answer = orjson.loads(await resp.read())
        resp.release()
    assert (chosen, resp.status, answer["model"]) == (engine, 200, "ft:extra")
    assert reloaded == [engine.url]
    assert engine.inflight == 1  # the answer's, as open() counts it (the caller takes it off)
    assert upstream.open_requests == 0


async def test_a_reload_that_fails_is_the_answer(upstream: Upstream) -> None:
    async with sim_processes(SimProcess(("base",))) as (sim,):
        engine = Engine(sim.url)

        async def reload(on: Engine) -> None:
            raise ServiceUnavailable("cannot load it", code="model_unavailable")

        with pytest.raises(ServiceUnavailable, match="cannot load it"):
            await upstream.open([engine], "/v1/completions", BODY, JSON, False, reload=reload)
    assert (engine.inflight, upstream.open_requests) == (0, 0)


async def test_a_model_still_missing_after_its_reload_is_relayed_once(upstream: Upstream) -> None:
    async with sim_processes(SimProcess(("base",))) as (sim,):
        engine = Engine(sim.url)
        calls: list[str] = []

        async def reload(on: Engine) -> None:
            calls.append(on.url)  # loads nothing

        _, resp = await upstream.open([engine], "/v1/completions", BODY, JSON, False, reload=reload)
        said = orjson.loads(await resp.read())
        resp.release()
    assert resp.status == 404
    assert "does not exist" in said["error"]["message"]
    assert calls == [engine.url]
