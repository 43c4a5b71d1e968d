"""The Responses API through the gateway, with keys on and two simulator engines serving one
model: metering, tenant isolation of stored responses, and conversations kept on the engine
that stored them (the simulator, like vLLM, knows only its own responses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.api.response_homes import RedisHomes, home_key
from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.metering.ledger import log_key
from gateway.metering.record import UsageRecord
from gateway.netutil import free_port
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.gateways import ADMIN_TOKEN, PEPPER, gateway_process, shared_config, tenant_key
from tests.support.redis_control import redis_proxy, restartable_redis
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True, slots=True)
class Fleet:
    gateway: str
    sims: tuple[str, str]
    redis: Redis
    http: aiohttp.ClientSession
    clients: list[openai.AsyncOpenAI]  # closed with the fleet

    async def client(self, tenant: str) -> openai.AsyncOpenAI:
        body = {"tenant": tenant}
        async with self.http.post(f"{self.gateway}/admin/v1/keys", json=body, headers=ADMIN) as r:
            assert r.status == 201, await r.text()
            key = (await r.json())["key"]
        client = openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    async def call(
        self, client: openai.AsyncOpenAI, method: str, path: str
    ) -> tuple[int, dict[str, Any]]:
        headers = {"authorization": f"Bearer {client.api_key}"}
        async with self.http.request(method, f"{self.gateway}/v1{path}", headers=headers) as r:
            return r.status, await r.json()

    async def records(self, tenant: str, count: int) -> list[UsageRecord]:
        """Once `count` records are there, a moment more to catch any extra one."""
        for _ in range(100):
            if await self.redis.xlen(log_key(tenant)) >= count:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        raw = await self.redis.xrange(log_key(tenant))
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", raw)
        return [UsageRecord.from_fields(fields) for _, fields in entries]

    async def requests(self) -> list[int]:
        return [(await sim_state(self.http, sim))["total_requests"] for sim in self.sims]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    spill_dir: Path = tmp_path_factory.mktemp("responses-spill")
    config = SimConfig(models=[MODEL], max_tokens=8)
    async with (
        running_redis(None) as redis_url,
        running_sim(config) as one,
        running_sim(config) as two,
    ):
        settings = Settings.model_validate(
            {
                "models": [
                    {"name": MODEL, "engines": [one, two]},
                    {"name": "on-two", "engines": [two]},  # (a pool without `one`)
                ],
                "routing": {"strategy": "round_robin"},
                "redis_url": redis_url,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(spill_dir)},
            }
        )
        redis = Redis.from_url(redis_url)
        try:
            async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
                fleet = Fleet(gateway, (one, two), redis, http, [])
                try:
                    yield fleet
                finally:
                    for client in fleet.clients:
                        await client.close()
        finally:
            await redis.aclose()


async def test_plain_and_streamed_responses_are_metered_with_their_tokens(fleet: Fleet) -> None:
    client = await fleet.client("meter")
    plain = await client.responses.create(model=MODEL, input="one two three")
    assert plain.output_text
    assert plain.usage is not None
    stream = await client.responses.create(model=MODEL, input="four five", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    records = await fleet.records("meter", 2)
    assert [(r.route, r.stream, r.outcome) for r in records] == [
        ("responses", False, "ok"),
        ("responses", True, "ok"),
    ]
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (
        plain.usage.input_tokens,
        plain.usage.output_tokens,
    )
    assert (records[1].prompt_tokens, records[1].completion_tokens) == (3, 8)  # 1 + 2 words


async def test_a_stream_the_client_left_is_billed_the_deltas_it_was_sent(fleet: Fleet) -> None:
    """vLLM reports a response's usage only at its end: an abandoned stream is billed one token
    per delta relayed and the input as estimated at admission (13 characters: 4 tokens, and 7
    of the chat template's: a turn's 4, the reply's 3)."""
    client = await fleet.client("leaver")
    body = {"model": MODEL, "input": "one two three", "stream": True, "max_output_tokens": 200}
    body["sim"] = {"itl_ms": 40}
    headers = {"authorization": f"Bearer {client.api_key}"}
    deltas = 0
    async with fleet.http.post(f"{fleet.gateway}/v1/responses", json=body, headers=headers) as r:
        assert r.status == 200
        async for line in r.content:
            deltas += line.startswith(b"event: response.output_text.delta")
            if deltas == 5:
                break  # leave: the connection is closed with the response
    (record,) = await fleet.records("leaver", 1)
    assert (record.route, record.stream, record.outcome) == (
        "responses",
        True,
        "client_disconnected",
    )
    assert record.prompt_tokens == 4 + 4 + 3
    assert 5 <= record.completion_tokens <= 8  # what was sent before the gateway noticed
    assert record.completion_tokens < 200


async def test_a_stream_every_engine_dropped_before_it_began_is_a_400(fleet: Fleet) -> None:
    """vLLM refuses some fields only as generation starts, by dropping the stream after its
    opening events. On the model's last engine the client got a 200 whose opening events
    ended in an `engine_refused` error event, which the SDK's `responses.stream()` ended on
    quietly; nothing had reached the client: it is that 400, before any event."""
    before = await fleet.requests()
    client = await fleet.client("refused")
    with pytest.raises(openai.BadRequestError) as refused:  # (both engines: tried on each)
        await client.responses.create(
            model=MODEL,
            input="hi",
            stream=True,
            extra_body={"sim": {"drop": "after_headers"}},
        )
    assert refused.value.code == "engine_refused"
    assert "without 'stream'" in refused.value.message
    (record,) = await fleet.records("refused", 1)
    assert (record.route, record.stream, record.outcome, record.status) == (
        "responses",
        True,
        "rejected",
        400,
    )
    assert (record.prompt_tokens, record.completion_tokens) == (0, 0)
    assert [n - m for n, m in zip(await fleet.requests(), before, strict=True)] == [1, 1]
    # the stream that begins is relayed from its first event, as before
    stream = await client.responses.create(model=MODEL, input="hi", stream=True)
    kinds = [event.type async for event in stream]
    assert (kinds[0], kinds[-1]) == ("response.created", "response.completed")


async def test_a_plain_response_the_client_left_is_billed_what_was_generated(
    fleet: Fleet,
) -> None:
    """A non-streaming response is asked of the engine as a stream, so one abandoned midway is
    billed like a stream (it used to be 0 tokens: vLLM aborts it and reports nothing)."""
    client = await fleet.client("plain-leaver")
    body = {"model": MODEL, "input": "one two three", "max_output_tokens": 200}
    body["sim"] = {"itl_ms": 40}
    headers = {"authorization": f"Bearer {client.api_key}"}
    timeout = aiohttp.ClientTimeout(total=0.6)
    with pytest.raises(TimeoutError):
        async with fleet.http.post(
            f"{fleet.gateway}/v1/responses", json=body, headers=headers, timeout=timeout
        ) as r:
            await r.read()
    (record,) = await fleet.records("plain-leaver", 1)
    assert (record.route, record.stream, record.outcome) == (
        "responses",
        False,
        "client_disconnected",
    )
    assert record.prompt_tokens == 4 + 4 + 3  # the estimate at admission, as a stream's
    assert 5 <= record.completion_tokens < 200


async def test_a_plain_response_is_the_engines_with_its_usage_and_id(fleet: Fleet) -> None:
    """Collected from the engine's events, the body is the terminal event's response, and a
    follow-up finds the engine that stored it."""
    client = await fleet.client("plain-body")
    first = await client.responses.create(model=MODEL, input="one two three", stream=False)
    assert (first.object, first.status) == ("response", "completed")
    assert first.output_text
    assert first.usage is not None
    assert first.usage.output_tokens == len(first.output_text.split())
    second = await client.responses.create(model=MODEL, input="four", previous_response_id=first.id)
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


async def test_a_conversation_stays_on_the_engine_that_stored_it(fleet: Fleet) -> None:
    client = await fleet.client("talk")
    first = await client.responses.create(model=MODEL, input="hello there")
    before = await fleet.requests()
    last = first
    for i in range(4):  # round robin alone would send every other turn to the other engine
        if i % 2:
            last = await _streamed_turn(client, last.id, i)
        else:
            last = await client.responses.create(
                model=MODEL, input=f"and then {i}", previous_response_id=last.id
            )
    after = await fleet.requests()
    assert sorted(b - a for a, b in zip(before, after, strict=True)) == [0, 4]
    assert first.usage is not None
    assert last.usage is not None  # every turn re-reads the conversation before it
    assert last.usage.input_tokens > 4 * (first.usage.input_tokens + first.usage.output_tokens)
    status, body = await fleet.call(client, "GET", f"/responses/{last.id}")
    assert (status, body["id"]) == (200, last.id)


async def _streamed_turn(client: openai.AsyncOpenAI, previous: str, i: int) -> Any:
    stream = await client.responses.create(
        model=MODEL, input=f"and then {i}", previous_response_id=previous, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    return events[-1].response


async def test_another_tenants_response_is_not_found_like_an_unknown_one(fleet: Fleet) -> None:
    owner, other = await fleet.client("owner"), await fleet.client("other")
    made = await owner.responses.create(model=MODEL, input="a secret")
    status, body = await fleet.call(owner, "GET", f"/responses/{made.id}")
    assert (status, body["id"], body["usage"]["output_tokens"]) == (200, made.id, 8)
    for path in (f"/responses/{made.id}", "/responses/resp_unknown"):
        status, body = await fleet.call(other, "GET", path)
        assert status == 404
        assert (body["error"]["code"], body["error"]["type"]) == (
            "response_not_found",
            "invalid_request_error",
        )
    for method, path in (
        ("DELETE", f"/responses/{made.id}"),
        ("POST", f"/responses/{made.id}/cancel"),
    ):
        assert (await fleet.call(other, method, path))[0] == 404
    with pytest.raises(openai.NotFoundError) as refused:
        await other.responses.create(model=MODEL, input="more", previous_response_id=made.id)
    assert refused.value.code == "response_not_found"
    status, _ = await fleet.call(owner, "GET", f"/responses/{made.id}")
    assert status == 200  # still the owner's


async def test_retrieve_and_cancel_are_recorded_without_tokens(fleet: Fleet) -> None:
    client = await fleet.client("fetch")
    made = await client.responses.create(model=MODEL, input="keep this")
    assert (await fleet.call(client, "GET", f"/responses/{made.id}"))[0] == 200
    status, body = await fleet.call(client, "POST", f"/responses/{made.id}/cancel")
    assert (status, body["error"]["message"]) == (400, "Cannot cancel a synchronous response.")
    records = await fleet.records("fetch", 3)
    assert [(r.route, r.prompt_tokens + r.completion_tokens) for r in records[1:]] == [
        ("responses/{id}", 0),
        ("responses/{id}/cancel", 0),
    ]


async def test_retrieving_as_a_stream_is_refused_by_name(fleet: Fleet) -> None:
    """Only a background response (refused at create) has events to stream again; vLLM would
    answer JSON to a client reading events."""
    client = await fleet.client("replay")
    made = await client.responses.create(model=MODEL, input="keep this")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.retrieve(made.id, stream=True)
    assert (refused.value.param, refused.value.code) == ("stream", "unsupported_parameter")
    assert (await fleet.call(client, "GET", f"/responses/{made.id}?stream=false"))[0] == 200
    status, body = await fleet.call(client, "GET", f"/responses/{made.id}?stream=maybe")
    assert (status, body["error"]["param"]) == (400, "stream")


async def test_a_deleted_response_is_gone_for_good(fleet: Fleet) -> None:
    client = await fleet.client("tidy")
    made = await client.responses.create(model=MODEL, input="forget me")
    status, body = await fleet.call(client, "DELETE", f"/responses/{made.id}")
    assert (status, body) == (200, {"id": made.id, "object": "response", "deleted": True})
    assert (await fleet.call(client, "GET", f"/responses/{made.id}"))[0] == 404
    assert (await fleet.call(client, "DELETE", f"/responses/{made.id}"))[0] == 404
    # A DELETE of an id never stored leaves nothing in Redis (not a tombstone per id asked for:
    # any number of made-up ids would each have taken a key for responses.ttl_s).
    assert (await fleet.call(client, "DELETE", "/responses/resp_never_made"))[0] == 404
    assert not await fleet.redis.exists(home_key("tidy", "resp_never_made"))


async def test_a_response_whose_engine_left_is_not_found_and_says_why(fleet: Fleet) -> None:
    client = await fleet.client("left")
    await fleet.redis.set(home_key("left", "resp_old"), orjson.dumps([MODEL, "http://127.0.0.1:9"]))
    status, body = await fleet.call(client, "GET", "/responses/resp_old")
    assert (status, body["error"]["code"]) == (404, "response_not_found")
    assert "no longer serves it" in body["error"]["message"]


async def test_a_previous_response_its_engine_forgot_is_not_found_by_its_field(
    fleet: Fleet,
) -> None:
    """Found by review: an engine that restarted forgot the responses it made; continuing one
    (its home still names that engine) was a 404 on `param` "response_id", vLLM's name, where
    the field sent is `previous_response_id` (as the gateway's own refusal of an unknown id
    says). GET keeps "response_id": its path's."""
    client = await fleet.client("forgot")
    await fleet.redis.set(
        home_key("forgot", "resp_forgotten"), orjson.dumps([MODEL, fleet.sims[0]])
    )
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as refused:
            await client.responses.create(
                model=MODEL, input="go on", previous_response_id="resp_forgotten", stream=stream
            )
        assert (refused.value.code, refused.value.param) == (
            "response_not_found",
            "previous_response_id",
        ), stream
    status, body = await fleet.call(client, "GET", "/responses/resp_forgotten")
    assert (status, body["error"]["param"]) == (404, "response_id")


async def test_a_response_whose_engine_is_down_says_that_engine_is_unreachable(
    tmp_path: Path,
) -> None:
    """Found by review: GET and continuing a response whose engine was down were a 503 "No
    engine serving this model is reachable" while the model's other engine served; only the
    engine holding the response can answer for it, and the 503 now says so."""
    down = f"http://127.0.0.1:{free_port()}"  # (nothing listens there)
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
    ):
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim, down]}],
                "redis_url": redis_url,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(tmp_path)},
            }
        )
        redis = Redis.from_url(redis_url)
        async with (
            serve_asgi(create_app(settings)) as gateway,
            aiohttp.ClientSession() as http,
        ):
            header = (await tenant_key(http, gateway, "down"))["authorization"]
            await redis.set(home_key("down", "resp_on_down"), orjson.dumps([MODEL, down]))
            await redis.aclose()
            client = openai.AsyncOpenAI(
                base_url=f"{gateway}/v1", api_key=header.removeprefix("Bearer "), max_retries=0
            )
            async with client:
                assert (await client.responses.create(model=MODEL, input="hi")).output_text
                with pytest.raises(openai.InternalServerError) as got:
                    await client.responses.retrieve("resp_on_down")
                with pytest.raises(openai.InternalServerError) as continued:
                    await client.responses.create(
                        model=MODEL, input="go on", previous_response_id="resp_on_down"
                    )
    for refused in (got.value, continued.value):
        assert refused.status_code == 503
        assert "The engine holding this stored response is unreachable" in refused.message


async def test_unsupported_fields_are_refused_by_name(fleet: Fleet) -> None:
    client = await fleet.client("strict")
    for extra in ({"background": True}, {"request_id": "resp_mine"}):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model=MODEL, input="x", extra_body=extra)
        assert refused.value.param == next(iter(extra))
    with pytest.raises(openai.BadRequestError) as missing:
        await client.responses.create(model=MODEL, extra_body={"input": None})
    assert missing.value.param == "input"
    with pytest.raises(openai.BadRequestError) as empty:  # was sent on (200), as chat's is not
        await client.responses.create(model=MODEL, input=[])
    assert (empty.value.param, empty.value.code) == ("input", "empty_array")


async def test_a_store_that_cannot_answer_is_a_retryable_503(fleet: Fleet) -> None:
    client = await fleet.client("store-broken")
    tenant_key = home_key("store-broken", "resp_broken")
    await fleet.redis.rpush(tenant_key, "not a string")  # GET of it: Redis's WRONGTYPE error
    headers = {"authorization": f"Bearer {client.api_key}"}
    async with fleet.http.get(f"{fleet.gateway}/v1/responses/resp_broken", headers=headers) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "response_store_unavailable"
        assert r.headers["retry-after"] == "1"  # as every other 503 of a store away


async def test_a_response_made_with_a_model_the_key_may_not_use_is_not_found(fleet: Fleet) -> None:
    """A key limited to some models cannot continue a conversation another of its tenant's keys
    had with a model outside its list (one engine can serve both: an adapter and its base)."""
    body = {"tenant": "narrow", "models": [MODEL]}
    async with fleet.http.post(f"{fleet.gateway}/admin/v1/keys", json=body, headers=ADMIN) as r:
        assert r.status == 201, await r.text()
        key = (await r.json())["key"]
    client = openai.AsyncOpenAI(base_url=f"{fleet.gateway}/v1", api_key=key, max_retries=0)
    fleet.clients.append(client)
    home = orjson.dumps(["adapter-not-allowed", fleet.sims[0]])
    await fleet.redis.set(home_key("narrow", "resp_adapter"), home)
    before = await fleet.requests()
    with pytest.raises(openai.NotFoundError) as refused:
        await client.responses.create(
            model=MODEL, input="go on", previous_response_id="resp_adapter"
        )
    assert (refused.value.code, refused.value.param) == (
        "response_not_found",
        "previous_response_id",
    )
    assert await fleet.requests() == before  # no engine was asked
    # Read, cancelled or deleted by this key: as an id never made (it said its engine was
    # gone, and a DELETE went through: the key could destroy what it may not read).
    for method, path in (
        ("GET", "/responses/resp_adapter"),
        ("POST", "/responses/resp_adapter/cancel"),
        ("DELETE", "/responses/resp_adapter"),
    ):
        status, answer = await fleet.call(client, method, path)
        assert (status, answer["error"]["code"]) == (404, "response_not_found"), (method, path)
        assert answer["error"]["message"] == "Response with id 'resp_adapter' not found."
    assert await fleet.redis.exists(home_key("narrow", "resp_adapter"))  # still there
    assert await fleet.requests() == before


async def test_a_conversation_moved_to_a_model_its_engine_does_not_serve_is_told_which(
    fleet: Fleet,
) -> None:
    """OpenAI lets a conversation go on with another model; here a response lives on the
    engine that made it. It was a 404 saying that engine no longer serves it, which it does."""
    client = await fleet.client("switch")
    await fleet.redis.set(home_key("switch", "resp_one"), orjson.dumps([MODEL, fleet.sims[0]]))
    before = await fleet.requests()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(
            model="on-two", input="go on", previous_response_id="resp_one"
        )
    assert (refused.value.code, refused.value.param) == (
        "previous_response_model",
        "previous_response_id",
    )
    assert f"continue this conversation with model '{MODEL}'" in refused.value.message
    assert await fleet.requests() == before


async def test_openais_other_responses_routes_are_unknown_urls(fleet: Fleet) -> None:
    """POST /v1/responses/compact and /input_tokens (the SDK's responses.compact and
    input_tokens.count) were a 405 of /responses/{id}, which the SDK raises as a bare
    APIStatusError, not NotFoundError."""
    client = await fleet.client("compact")
    for route in ("compact", "input_tokens"):
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.post(f"/responses/{route}", body={"model": MODEL}, cast_to=object)
        assert unknown.value.code == "unknown_url"


async def test_a_response_made_while_redis_refuses_writes_can_be_read_and_continued(
    fleet: Fleet,
) -> None:
    """Found by review: a stored response made while Redis could not be written was a 200, then
    404 for good to GET and previous_response_id (its home's write was logged and dropped). Its
    home waits in this process, then goes to Redis once Redis takes writes again."""
    client = await fleet.client("home-waits")
    await fleet.redis.config_set("min-replicas-to-write", "1")  # every write: NOREPLICAS
    try:
        made = await client.responses.create(model=MODEL, input="hello")
        assert made.status == "completed"
        assert (await client.responses.retrieve(made.id)).id == made.id
        turn = await client.responses.create(
            model=MODEL, input="and?", previous_response_id=made.id
        )
        assert await fleet.redis.get(home_key("home-waits", made.id)) is None
    finally:
        await fleet.redis.config_set("min-replicas-to-write", "0")
    # In Redis (for the other replicas) with no other Responses call of this one: it was
    # written only at this process's next one (found by the review of this fix).
    async with asyncio.timeout(10):
        while await fleet.redis.get(home_key("home-waits", made.id)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert await fleet.redis.get(home_key("home-waits", turn.id)) is not None
    assert (await client.responses.retrieve(made.id)).id == made.id
    assert (await client.responses.retrieve(turn.id)).id == turn.id


async def test_a_response_deleted_while_its_home_waits_for_redis_stays_deleted(
    fleet: Fleet,
) -> None:
    """Found by review: a stored response made and deleted while Redis could not be written
    was a 503 to DELETE, and its home (waiting in this process) went to Redis afterwards: the
    response the client deleted was served again. The delete waits here as the home did and
    goes to Redis as a tombstone; the response is not found from the delete on."""
    client = await fleet.client("home-deleted")
    await fleet.redis.config_set("min-replicas-to-write", "1")  # every write: NOREPLICAS
    try:
        gone = await client.responses.create(model=MODEL, input="forget me", store=True)
        kept = await client.responses.create(model=MODEL, input="keep me", store=True)
        await client.responses.delete(gone.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(gone.id)
    finally:
        await fleet.redis.config_set("min-replicas-to-write", "0")
    async with asyncio.timeout(10):  # the delete reached Redis (its tombstone: other replicas)
        while not await fleet.redis.exists(home_key("home-deleted", gone.id)):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(gone.id)
    assert (await client.responses.retrieve(kept.id)).id == kept.id
    # The tombstone reads as a home of no model on no engine (found by review: "deleted", not
    # JSON, made a replica of the release before fail on it in a rolling update, not 404).
    tombstone = await fleet.redis.get(home_key("home-deleted", gone.id))
    assert tombstone is not None
    assert orjson.loads(tombstone) == ["", ""]


async def test_a_response_deleted_on_another_replica_is_not_brought_back_by_a_flush(
    tmp_path: Path,
) -> None:
    """Found by review: replica A's write of a home ran but answered late, so the home also
    waited in A; deleted through replica B meanwhile, A's flush wrote it back and the deleted
    response was served again. DELETE leaves a tombstone and a flush writes only where the key
    is absent."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
        redis_proxy(urlsplit(redis_url).port or 0) as proxy,
    ):

        def settings(url: str) -> Settings:
            return Settings.model_validate(
                {
                    "models": [{"name": MODEL, "engines": [sim]}],
                    "redis_url": url,
                    "admin_token": ADMIN_TOKEN,
                    "key_pepper": PEPPER,
                    "metering": {"spill_dir": str(tmp_path / url.rsplit(":", 1)[-1])},
                }
            )

        app_a = create_app(settings(proxy.url))
        async with (
            serve_asgi(app_a) as a,
            serve_asgi(create_app(settings(redis_url))) as b,
            aiohttp.ClientSession() as http,
        ):
            homes = app_a.state.gateway.homes  # (made at startup)
            assert isinstance(homes, RedisHomes)
            header = (await tenant_key(http, b, "two-replicas"))["authorization"]
            key = header.removeprefix("Bearer ")
            on_a = openai.AsyncOpenAI(base_url=f"{a}/v1", api_key=key, max_retries=0)
            on_b = openai.AsyncOpenAI(base_url=f"{b}/v1", api_key=key, max_retries=0)
            async with on_a, on_b:
                proxy.set_mode("delay", delay_s=1.5, late=(b"\r\nSET\r\n",))  # A's SETs run
                made = await on_a.responses.create(model=MODEL, input="hello", store=True)
                async with asyncio.timeout(10):  # A heard late: the home waits in A too
                    while not homes.pending.oldest(1):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                await on_b.responses.delete(made.id)
                proxy.set_mode("pass")
                async with asyncio.timeout(10):  # A's flush went by
                    while homes.pending.oldest(1):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                for client in (on_b, on_a):
                    with pytest.raises(openai.NotFoundError):
                        await client.responses.retrieve(made.id)


async def test_a_response_made_while_redis_is_down_outlives_a_restart_of_its_replica(
    tmp_path: Path,
) -> None:
    """Found by review: a replica stopped while Redis was down gave the homes waiting in it one
    try of Redis and dropped them: once Redis and the replica were back, the response (still on
    its engine) was 404 on every replica. They go to disk at shutdown and come back at start."""
    async with (
        restartable_redis(tmp_path) as redis,
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
        aiohttp.ClientSession() as http,
    ):
        extra = "metering: {flush_timeout_s: 1}"
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=redis.url, model=MODEL, sim=sim, extra=extra
        )
        async with gateway_process(config) as first:
            headers = await tenant_key(http, first.url, "restarted")
            async with http.get(f"{first.url}/v1/models", headers=headers) as r:
                assert r.status == 200  # the key is now cached
            await redis.stop()
            body = {"model": MODEL, "input": "remember me"}
            async with http.post(f"{first.url}/v1/responses", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                made = (await r.json())["id"]
            first.process.terminate()
            await first.process.wait()
        await redis.start()
        async with (
            gateway_process(config) as second,
            http.get(f"{second.url}/v1/responses/{made}", headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            assert (await r.json())["id"] == made
        stored = Redis.from_url(redis.url)  # (for every replica, not only this process)
        try:
            assert await stored.get(home_key("restarted", made)) == orjson.dumps([MODEL, sim])
        finally:
            await stored.aclose()


async def test_a_response_read_right_after_its_create_on_a_hanging_redis_is_found(
    tmp_path: Path,
) -> None:
    """Found by review: with Redis hanging, a GET right after a create was a 503: it looked for
    a home waiting here before its Redis read, while the create's write was still waiting on its
    own timeout, and not again once its read failed (the home waited here by then)."""
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=8)) as sim,
        redis_proxy(urlsplit(redis_url).port or 0) as proxy,
    ):
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "redis_url": proxy.url,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(tmp_path)},
            }
        )
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            header = (await tenant_key(http, gateway, "hanging"))["authorization"]
            key = header.removeprefix("Bearer ")
            async with openai.AsyncOpenAI(
                base_url=f"{gateway}/v1", api_key=key, max_retries=0
            ) as client:
                await client.models.list()  # the key is now cached
                proxy.set_mode("stall")
                try:
                    made = await client.responses.create(model=MODEL, input="hello")
                    assert (await client.responses.retrieve(made.id)).id == made.id
                finally:
                    proxy.set_mode("pass")


async def test_a_response_is_found_the_moment_its_client_has_it(fleet: Fleet) -> None:
    """Found by review 2026-12-07 (the Node SDK, once in 22 on the real engine): a follow-up
    sent the moment a response arrived was 404 `response_not_found`: its home was noted after
    the answer's last bytes had gone, and after its accounting. With Redis holding writes back
    for 0.3 s as the response ends (CLIENT PAUSE WRITE; reads go on), the answer waits for its
    home, and a read sent the moment it arrives finds it, streamed or not."""
    client = await fleet.client("found-at-once")
    await client.models.list()  # (the key cached: nothing else on the path writes)
    for stream in (False, True):
        await fleet.redis.client_pause(300, all=False)  # writes only
        if stream:
            made_id = ""
            async with await client.responses.create(
                model=MODEL, input="hello", stream=True
            ) as events:
                async for event in events:
                    if event.type == "response.completed":
                        made_id = event.response.id
        else:
            made_id = (await client.responses.create(model=MODEL, input="hello")).id
        assert (await client.responses.retrieve(made_id)).id == made_id
