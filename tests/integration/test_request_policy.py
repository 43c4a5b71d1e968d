"""What a tenant may send to the engine, through real HTTP: media URLs (with a canary server
that must never be fetched), engine-internal fields, and per-tenant cache salts."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.api.policy import cache_salt, salt_key_from, session_id
from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.netutil import free_port
from gateway.settings import RequestPolicySettings
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, Stack, auth_settings
from tests.integration.sim_fixture import running_sim, sim_state
from tests.support.cli import run_llmaas
from tests.support.gateways import ADMIN_TOKEN, PEPPER
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

PUBLIC = "93.184.215.14"
NAMES = {
    "public.example": [PUBLIC],
    "canary.test": ["127.0.0.1"],  # a name that resolves to loopback
    "localhost": ["127.0.0.1", "::1"],
}
MAX_DATA = 16 * 1024  # the gateway's cap on data: URLs here (the body cap is 16 MiB)
LITERALS = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254", "10.0.0.1"]


async def fake_resolve(host: str) -> list[str]:
    """No network in tests: the names the tests use, and nothing else."""
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return NAMES[host]


@dataclass(frozen=True, slots=True)
class Setup:
    gateway: str
    sim: str
    canary: str  # host:port of a server that must never see a request
    canary_hits: list[str]
    http: aiohttp.ClientSession
    clients: list[openai.AsyncOpenAI]  # closed by the fixture

    def client(self, key: str) -> openai.AsyncOpenAI:
        oai = openai.AsyncOpenAI(base_url=f"{self.gateway}/v1", api_key=key, max_retries=0)
        self.clients.append(oai)
        return oai

    async def key(self, tenant: str) -> str:
        url = f"{self.gateway}/admin/v1/keys"
        async with self.http.post(url, json={"tenant": tenant}, headers=ADMIN) as resp:
            assert resp.status == 201
            key: str = (await resp.json())["key"]
            return key

    async def last_body(self) -> dict[str, Any]:
        body: dict[str, Any] = (await sim_state(self.http, self.sim))["last_request"]["body"]
        return body


@asynccontextmanager
async def canary_server(hits: list[str]) -> AsyncIterator[str]:
    async def record(request: web.Request) -> web.Response:
        hits.append(str(request.url))
        return web.Response(body=b"\x89PNG", content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    hits: list[str] = []
    async with running_redis(None) as redis_url, running_sim(SimConfig(models=[MODEL])) as sim:
        policy = RequestPolicySettings(max_data_url_bytes=MAX_DATA)
        settings = auth_settings(sim, redis_url, tmp_path / "spill")
        app = create_app(
            settings.model_copy(update={"request_policy": policy}), media_resolver=fake_resolve
        )
        async with (
            canary_server(hits) as canary,
            serve_asgi(app) as gateway,
            aiohttp.ClientSession() as http,
        ):
            clients: list[openai.AsyncOpenAI] = []
            try:
                yield Setup(gateway, sim, canary, hits, http, clients)
            finally:
                for oai in clients:
                    await oai.close()


def image(url: str) -> Any:
    parts = [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return [{"role": "user", "content": parts}]


async def _put_tenant(setup: Setup, tenant: str, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"{setup.gateway}/admin/v1/tenants/{tenant}"
    async with setup.http.put(url, json=body, headers=ADMIN) as resp:
        return resp.status, await resp.json()


async def test_media_urls_to_private_places_never_reach_the_engine(setup: Setup) -> None:
    port = setup.canary.split(":")[1]
    status, refused_list = await _put_tenant(setup, "media", {"media_hosts": LITERALS[:1]})
    assert status == 400  # a private literal in the list is refused where it is listed
    assert "is not a public address" in refused_list["error"]["message"]
    for other_way in ("2130706433", "0x7f000001", "127.1"):  # (inet_aton's: still loopback)
        status, refused = await _put_tenant(setup, "media", {"media_hosts": [other_way]})
        assert status == 400, refused
        assert "127.0.0.1, not a public address" in refused["error"]["message"]
    hosts = ["public.example", "canary.test", "localhost"]  # names: checked as requests use them
    status, _ = await _put_tenant(setup, "media", {"media_hosts": hosts})
    assert status == 200
    oai = setup.client(await setup.key("media"))
    refused = {
        f"http://{setup.canary}/plain-http.png": "Only https",
        f"https://127.0.0.1:{port}/x.png": "not allowed",
        f"https://localhost:{port}/x.png": "not a public address",
        f"https://canary.test:{port}/x.png": "not a public address",
        f"https://[::1]:{port}/x.png": "not allowed",
        f"https://[::ffff:127.0.0.1]:{port}/x.png": "not allowed",
        "https://169.254.169.254/latest/meta-data": "not allowed",
        "https://10.0.0.1/x.png": "not allowed",
        "file:///etc/passwd": "Only https",
        f"ftp://{setup.canary}/x.png": "Only https",
        f"https://user:pass@{setup.canary}/x.png": "credentials",
        "https://not-listed.example/x.png": "not allowed",
        "data:image/png;base64," + "A" * (MAX_DATA + 1): "capped",
        "data:text/html;base64,PGgxPmhpPC9oMT4=": "An image data: URL's media type must be image/*",
    }
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    for url, words in refused.items():
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(model=MODEL, messages=image(url), max_tokens=1)
        error = info.value.body
        assert isinstance(error, dict)
        assert error["param"] == "messages[0].content[1].image_url.url", url[:60]
        assert words in error["message"], (url[:60], error["message"])
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before
    assert setup.canary_hits == []

    # The allow-listed public host (resolved by the injected resolver) passes to the engine.
    url = "https://public.example/cat.png"
    await oai.chat.completions.create(model=MODEL, messages=image(url), max_tokens=1)
    assert (await setup.last_body())["messages"][0]["content"][1]["image_url"]["url"] == url


async def test_a_data_url_of_the_default_limit_fits_the_default_body(tmp_path: Path) -> None:
    """The body cap (4 MiB) was below the data: URL cap (8 MiB) it comes first to: an image of
    3 MiB got a 413. With the defaults, an image of 5 MiB (a 6.7 MiB URL) reaches the engine."""
    async with running_redis(None) as redis_url, running_sim(SimConfig(models=[MODEL])) as sim:
        settings = auth_settings(sim, redis_url, tmp_path / "spill")
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            url = f"{gateway}/admin/v1/keys"
            async with http.post(url, json={"tenant": "media"}, headers=ADMIN) as resp:
                key = (await resp.json())["key"]
            picture = base64.b64encode(b"\x89PNG" + b"\0" * (5 * 1024 * 1024)).decode()
            async with openai.AsyncOpenAI(
                base_url=f"{gateway}/v1", api_key=key, max_retries=0
            ) as client:
                answer = await client.chat.completions.create(
                    model=MODEL, messages=image(f"data:image/png;base64,{picture}"), max_tokens=2
                )
            assert answer.choices[0].message.content
            body = (await sim_state(http, sim))["last_request"]["body"]
            assert len(body["messages"][0]["content"][1]["image_url"]["url"]) > 6 * 1024 * 1024


async def test_media_the_policy_did_not_read_is_refused(setup: Setup) -> None:
    """Two shapes vLLM reads and the policy walked past: embeddings' `messages` as a batch of
    conversations (each rendered as a chat, its media fetched: an http:// metadata address
    reached the engine), and a part that carries `prompt_embeds` under another `type` (vLLM
    classifies a part with a uuid by its keys)."""
    oai = setup.client(await setup.key("unread"))
    metadata = image("http://169.254.169.254/latest/meta-data/")
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    with pytest.raises(openai.BadRequestError) as batched:
        await oai.embeddings.create(model=MODEL, input="x", extra_body={"messages": [metadata]})
    assert (batched.value.param, batched.value.code) == ("messages[0]", "unsupported_value")
    sneaky = {"type": "text", "text": "hi", "uuid": "u1", "prompt_embeds": 1, "data": "QUFBQQ=="}
    messages: Any = [{"role": "user", "content": [sneaky]}]
    with pytest.raises(openai.BadRequestError) as tensor:
        await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert tensor.value.param == "messages[0].content[0].prompt_embeds"
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before
    assert setup.canary_hits == []


async def test_embeddings_of_one_conversation_as_vllm_takes_them(setup: Setup) -> None:
    """vLLM embeds one conversation given in `messages` (without `input`) or in `input`: both
    were refused ("Missing required parameter: 'input'"), though the README refused only a
    batch of them. The policy reads the conversation wherever it is; a batch stays refused."""
    key = await setup.key("chat-embed")
    headers = {"authorization": f"Bearer {key}"}
    hello = [{"role": "user", "content": "hello there"}]
    for body in ({"model": MODEL, "messages": hello}, {"model": MODEL, "input": hello}):
        async with setup.http.post(
            f"{setup.gateway}/v1/embeddings", json=body, headers=headers
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["object"] == "list"
        assert len(answer["data"]) == 1
        assert answer["usage"]["prompt_tokens"] > 0
        sent = await setup.last_body()
        assert {k: v for k, v in sent.items() if k != "cache_salt"} == body  # as sent
    oai = setup.client(key)
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    metadata: Any = image("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(openai.BadRequestError) as unread:
        await oai.embeddings.create(model=MODEL, input=metadata)
    assert unread.value.param == "input[0].content[1].image_url.url"
    with pytest.raises(openai.BadRequestError) as batched:
        await oai.embeddings.create(model=MODEL, input=[hello, hello])  # type: ignore[arg-type]
    assert (batched.value.param, batched.value.code) == ("input[0]", "unsupported_value")
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before


async def test_remote_media_is_off_by_default(setup: Setup) -> None:
    oai = setup.client(await setup.key("plain"))  # a tenant without media_hosts: the default
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(
            model=MODEL, messages=image("https://public.example/cat.png"), max_tokens=1
        )
    assert "not enabled" in str(info.value)
    small = "data:image/png;base64,iVBORw0KGgo="
    await oai.chat.completions.create(model=MODEL, messages=image(small), max_tokens=1)
    assert (await setup.last_body())["messages"][0]["content"][1]["image_url"]["url"] == small
    # The Responses API's input_image is held to the same rules.
    with pytest.raises(openai.BadRequestError) as responses:
        await oai.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "https://10.0.0.1/x", "detail": "auto"}
                    ],
                }
            ],
        )
    assert isinstance(responses.value.body, dict)
    assert responses.value.body["param"] == "input[0].content[0].image_url"
    # So is an image in a tool's output, which vLLM renders as a tool message's content.
    tool_output: Any = [
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_image", "image_url": f"http://{setup.canary}/x.png"}],
        }
    ]
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    with pytest.raises(openai.BadRequestError) as output:
        await oai.responses.create(model=MODEL, input=tool_output)
    assert isinstance(output.value.body, dict)
    assert output.value.body["param"] == "input[0].output[0].image_url"
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before
    assert setup.canary_hits == []


async def test_media_hosts_through_the_cli_and_admin_api(setup: Setup) -> None:
    status, out, err = await run_llmaas(
        setup.gateway,
        "tenants",
        "set",
        "cli",
        "--media-hosts",
        "Public.Example, cdn.example.com",
        token=ADMIN_TOKEN,
    )
    assert status == 0, err
    assert "public.example,cdn.example.com" in out
    oai = setup.client(await setup.key("cli"))
    url = "https://public.example/cat.png"
    await oai.chat.completions.create(model=MODEL, messages=image(url), max_tokens=1)
    assert (await setup.last_body())["messages"][0]["content"][1]["image_url"]["url"] == url

    status, body = await _put_tenant(setup, "bad", {"media_hosts": ["https://a.com/x"]})
    assert status == 400
    assert body["error"]["param"] == "media_hosts[0]"
    status, body = await _put_tenant(setup, "bad", {"media_hosts": ["a.com", "10.0.0.1"]})
    assert status == 400  # (accepted before, then every request's media from it refused)
    assert body["error"]["param"] == "media_hosts[1]"
    assert "'10.0.0.1' is not a public address" in body["error"]["message"]


async def test_tenants_get_different_cache_salts_that_clients_cannot_choose(setup: Setup) -> None:
    acme, other = setup.client(await setup.key("acme")), setup.client(await setup.key("other"))
    hello: Any = [{"role": "user", "content": "hi"}]

    async def salt_of(oai: openai.AsyncOpenAI, **extra: Any) -> str:
        await oai.chat.completions.create(
            model=MODEL, messages=hello, max_tokens=1, extra_body=extra
        )
        salt: str = (await setup.last_body())["cache_salt"]
        return salt

    acme_salt, other_salt = await salt_of(acme), await salt_of(other)
    assert acme_salt != other_salt
    assert acme_salt == cache_salt(salt_key_from(PEPPER), "acme", None)
    assert await salt_of(acme) == acme_salt  # stable: prefix caching still works
    # A client sending another tenant's salt (or its name) lands in a partition of its own.
    stolen = {await salt_of(acme, cache_salt=s) for s in (other_salt, "other", acme_salt)}
    assert not stolen & {acme_salt, other_salt}
    assert len(stolen) == 3
    # Completions, the Responses API and embeddings are salted too (a decoder embedding model
    # caches prefixes as well); an embeddings client's own salt stays within its tenant.
    await acme.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    assert (await setup.last_body())["cache_salt"] == acme_salt
    await acme.responses.create(model=MODEL, input="hi", max_output_tokens=1, store=False)
    assert (await setup.last_body())["cache_salt"] == acme_salt
    await acme.embeddings.create(model=MODEL, input="hi")
    assert (await setup.last_body())["cache_salt"] == acme_salt
    embedded = set()
    for oai in (acme, other):
        await oai.embeddings.create(model=MODEL, input="hi", extra_body={"cache_salt": "same"})
        embedded.add((await setup.last_body())["cache_salt"])
    assert len(embedded) == 2
    assert not embedded & {acme_salt, other_salt, "same"}


async def test_session_ids_never_meet_across_tenants(setup: Setup) -> None:
    """vLLM tags the KV-cache events it publishes with a request's `session_id`: the same id
    from two tenants must reach the engine apart, and stay one session within a tenant."""
    acme, other = setup.client(await setup.key("acme")), setup.client(await setup.key("other"))
    hello: Any = [{"role": "user", "content": "hi"}]
    extra = {"session_id": "agent-run-7"}

    async def sent_id(oai: openai.AsyncOpenAI) -> str:
        await oai.chat.completions.create(
            model=MODEL, messages=hello, max_tokens=1, extra_body=extra
        )
        return str((await setup.last_body())["session_id"])

    acme_id, other_id = await sent_id(acme), await sent_id(other)
    assert acme_id == session_id(salt_key_from(PEPPER), "acme", "agent-run-7")
    assert len({acme_id, other_id, "agent-run-7"}) == 3
    assert await sent_id(acme) == acme_id
    await acme.responses.create(model=MODEL, input="hi", max_output_tokens=1, extra_body=extra)
    assert (await setup.last_body())["session_id"] == acme_id


async def test_media_ids_never_meet_across_tenants(setup: Setup) -> None:
    """vLLM takes a content part's `uuid` as the media's cache key (a hit reuses the cached
    item, not the media sent): the same id from two tenants must reach the engine apart."""
    acme, other = setup.client(await setup.key("acme")), setup.client(await setup.key("other"))
    part = {**image("data:image/png;base64,iVBORw0KGgo=")[0]["content"][1], "uuid": "cat.png"}
    chat: Any = [{"role": "user", "content": [part]}]
    responses: Any = [{"role": "user", "content": [{**part, "type": "input_image"}]}]

    async def sent_id(oai: openai.AsyncOpenAI, responses_api: bool = False) -> str:
        if responses_api:
            await oai.responses.create(model=MODEL, input=responses, max_output_tokens=1)
            return str((await setup.last_body())["input"][0]["content"][0]["uuid"])
        await oai.chat.completions.create(model=MODEL, messages=chat, max_tokens=1)
        return str((await setup.last_body())["messages"][0]["content"][0]["uuid"])

    acme_id, other_id = await sent_id(acme), await sent_id(other)
    assert len({acme_id, other_id, "cat.png"}) == 3
    assert await sent_id(acme) == acme_id  # within a tenant the id still finds its media
    assert await sent_id(acme, responses_api=True) == acme_id


async def test_engine_internal_fields_are_refused(setup: Setup) -> None:
    oai = setup.client(await setup.key("acme"))
    hello: Any = [{"role": "user", "content": "hi"}]
    for field, value in (
        ("kv_transfer_params", {"do_remote_prefill": True}),
        ("ec_transfer_params", {"ec_items": [{"transfer_id": "someone-elses"}]}),
        ("vllm_xargs", {"a": 1}),
        ("request_id", "someone-elses"),
        ("chat_template", "{{ 7 * 7 }}"),
        ("mm_processor_kwargs", {"num_crops": 64}),
        ("stream_interval", 100_000),  # usage only at the end: a stream cut short went unbilled
        ("logit_bias", {str(i): 1 for i in range(301)}),
        ("structured_outputs", {"regex": "a" * (65 * 1024)}),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(
                model=MODEL, messages=hello, max_tokens=1, extra_body={field: value}
            )
        assert isinstance(info.value.body, dict)
        assert info.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as embeds:
        await oai.completions.create(
            model=MODEL, prompt="", max_tokens=1, extra_body={"prompt_embeds": "AAAA"}
        )
    assert isinstance(embeds.value.body, dict)
    assert embeds.value.body["param"] == "prompt_embeds"
    tensor_parts: list[Any] = [  # the same tensors as content parts (vLLM 0.32)
        {"type": "prompt_embeds", "data": "AAAA"},
        {"type": "video_embeds", "video_embeds": "AAAA"},
    ]
    for part in tensor_parts:
        messages: Any = [{"role": "user", "content": [part]}]
        with pytest.raises(openai.BadRequestError) as parts:
            await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
        assert isinstance(parts.value.body, dict)
        assert parts.value.body["code"] == "invalid_media_url"


async def test_best_of_is_refused_on_chat_as_on_completions(setup: Setup) -> None:
    """vLLM 0.32's chat request has no `best_of` (older vLLM read it): a chat asking for the
    best of 3 was answered one sample, picked by no one, and nothing said so (found
    2026-12-07). Refused as completions refuse it; `best_of` equal to `n` asks for nothing."""
    oai = setup.client(await setup.key("acme"))
    hi: Any = [{"role": "user", "content": "hi"}]
    refusals: list[openai.BadRequestError] = []
    for create, fields in (
        (oai.chat.completions.create, {"messages": hi}),
        (oai.completions.create, {"prompt": "hi"}),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            await create(model=MODEL, max_tokens=1, extra_body={"best_of": 3}, **fields)
        refusals.append(info.value)
    chat, completion = refusals
    assert (chat.param, chat.code) == (completion.param, completion.code)
    assert (chat.param, chat.code) == ("best_of", "unsupported_parameter")
    assert chat.message == completion.message
    served = await oai.chat.completions.create(
        model=MODEL, messages=hi, max_tokens=1, n=2, extra_body={"best_of": 2}
    )
    assert len(served.choices) == 2
    # numbers as vLLM reads them (found by review: "2" against 2 was refused)
    for best_of, n in (("2", 2), (2, "2"), (2.0, 2)):
        served = await oai.chat.completions.create(
            model=MODEL, messages=hi, max_tokens=1, extra_body={"best_of": best_of, "n": n}
        )
        assert len(served.choices) == 2


async def test_tools_the_engine_must_compile_are_bounded_as_schemas_are(setup: Setup) -> None:
    """With tool_choice "required" or a named function vLLM compiles the tools' parameters
    into a grammar, as it does a response_format schema (a 557 KB schema took a real vLLM 9 s
    of CPU, a 52 KB one 1.3 s); tools went to the engine unbounded, past max_schema_bytes."""
    oai = setup.client(await setup.key("acme"))
    hello: Any = [{"role": "user", "content": "hi"}]
    properties = {f"field_{i}": {"type": "string", "enum": ["a", "b", "c"]} for i in range(2000)}
    tools: Any = [
        {"type": "function", "function": {"name": "f", "parameters": {"properties": properties}}}
    ]
    named: Any = {"type": "function", "function": {"name": "f"}}
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    for choice in ("required", named):
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(
                model=MODEL, messages=hello, max_tokens=1, tools=tools, tool_choice=choice
            )
        assert isinstance(info.value.body, dict)
        assert (info.value.body["param"], info.value.body["code"]) == ("tools", "too_large")
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before
    # a model free to call no tool compiles nothing: the same tools pass
    await oai.chat.completions.create(
        model=MODEL, messages=hello, max_tokens=1, tools=tools, tool_choice="auto"
    )


async def test_bodies_nested_too_deeply_to_rewrite_are_400_on_every_route(setup: Setup) -> None:
    """orjson parses up to 1,024 levels of nesting but writes 254: such a body (valid JSON
    that vLLM would take) was the gateway's 500 wherever the policy rewrites it."""
    key = await setup.key("acme")
    deep = "[" * 300 + "]" * 300
    bodies = {
        "chat/completions": f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"x"}}]',
        "completions": f'{{"model":"{MODEL}","prompt":"x"',
        "embeddings": f'{{"model":"{MODEL}","input":"x"',
        "responses": f'{{"model":"{MODEL}","input":"x"',
    }
    before = (await sim_state(setup.http, setup.sim))["total_requests"]
    for route, head in bodies.items():
        async with setup.http.post(
            f"{setup.gateway}/v1/{route}",
            data=f'{head},"extra":{deep}}}',
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        ) as resp:
            assert resp.status == 400, route
            assert (await resp.json())["error"]["code"] == "invalid_json"
    assert (await sim_state(setup.http, setup.sim))["total_requests"] == before


async def test_dev_mode_anonymous_gets_the_same_policy(stack: Stack) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{stack.gateway}/v1", api_key="none", max_retries=0
    ) as oai:
        await _anonymous_policy(oai, stack)


async def _anonymous_policy(oai: openai.AsyncOpenAI, stack: Stack) -> None:
    hello: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(
            model=MODEL, messages=hello, max_tokens=1, extra_body={"vllm_xargs": {"a": 1}}
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "vllm_xargs"
    await oai.chat.completions.create(model=MODEL, messages=hello, max_tokens=1)
    sent = (await stack.sim_state())["last_request"]["body"]
    assert sent["cache_salt"] == cache_salt(salt_key_from(None), "anonymous", None)


async def test_integers_past_64_bits_reach_the_engine_as_sent(setup: Setup) -> None:
    """orjson read them as floats, so the rewritten body (every salted route's) carried
    1.8446744073709552e+19 where the client sent 18446744073709551617; vLLM's parser keeps
    every integer exact, so must the gateway."""
    key = await setup.key("acme")
    big = 2**64 + 1
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("chat/completions", chat),
        ("completions", {"prompt": "x", "max_tokens": 1, "stream": False}),  # re-written twice
        ("embeddings", {"input": "x"}),
        ("responses", {"input": "x", "max_output_tokens": 1, "store": False}),
        # a stream with its own stream_options, re-written to ask for usage (it was a 500)
        ("chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": False}}),
    ]
    for route, fields in bodies:
        schema = {"type": "integer", "maximum": big, "minimum": -big}
        body = {"model": MODEL, **fields, "extra_numbers": {"big": big}, "schema": schema}
        async with setup.http.post(
            f"{setup.gateway}/v1/{route}",
            data=json.dumps(body),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        ) as resp:
            assert resp.status == 200, (route, await resp.text())
            await resp.read()  # a stream to its end
        sent = json.loads((await sim_state(setup.http, setup.sim))["last_request"]["raw"])
        assert (sent["extra_numbers"]["big"], sent["schema"]) == (big, schema), route


async def test_prompt_logprobs_are_refused_where_the_engines_cannot_compute_them(
    tmp_path: Path,
) -> None:
    """Found by review: vLLM's CPU build with LoRA (llmaas up's engine) crashes its engine core
    on prompt logprobs for more than one sequence in a batch: one completions request of two
    prompts with echo and logprobs took the shared engine down for every tenant. With
    request_policy.prompt_logprobs false (what llmaas up sets) every way of asking is a 400
    naming the field, and the rest is served."""
    async with running_redis(None) as redis_url, running_sim(SimConfig(models=[MODEL])) as sim:
        settings = auth_settings(sim, redis_url, tmp_path / "spill").model_copy(deep=True)
        settings.request_policy.prompt_logprobs = False
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            url = f"{gateway}/admin/v1/keys"
            async with http.post(url, json={"tenant": "logprobs"}, headers=ADMIN) as resp:
                key = (await resp.json())["key"]
            async with openai.AsyncOpenAI(
                base_url=f"{gateway}/v1", api_key=key, max_retries=0
            ) as client:
                hi: Any = [{"role": "user", "content": "hi"}]
                refused: list[tuple[str, Any, dict[str, Any]]] = [
                    (
                        "echo",
                        client.completions.create,
                        {"prompt": ["a", "b"], "echo": True, "logprobs": 1},
                    ),
                    (
                        "prompt_logprobs",
                        client.completions.create,
                        {"prompt": "a", "extra_body": {"prompt_logprobs": 1}},
                    ),
                    (
                        "echo",
                        client.chat.completions.create,
                        {"messages": hi, "extra_body": {"echo": True}},
                    ),
                    (
                        "prompt_logprobs",
                        client.chat.completions.create,
                        {"messages": hi, "extra_body": {"prompt_logprobs": 0}},
                    ),
                ]
                for param, create, fields in refused:
                    with pytest.raises(openai.BadRequestError) as error:
                        await create(model=MODEL, max_tokens=1, **fields)
                    assert error.value.body is not None
                    assert (error.value.param, error.value.code) == (param, "unsupported_parameter")
                    assert "prompt logprobs" in error.value.message
                served = await client.completions.create(
                    model=MODEL, prompt=["a", "b"], max_tokens=1, echo=True, logprobs=None
                )
                assert len(served.choices) == 2
                chat = await client.chat.completions.create(
                    model=MODEL, messages=hi, max_tokens=1, logprobs=True, top_logprobs=2
                )
                assert chat.choices[0].logprobs is not None
