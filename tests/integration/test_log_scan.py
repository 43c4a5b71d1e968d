"""Logs and metrics never hold prompts, completions, keys or tokens: a gateway process (debug
JSON logs and the access log captured) runs every route with canary strings in every text a
client sends, then its log and /metrics are scanned; and /metrics labels take only configured
values, whatever models, paths, keys and headers clients make up."""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import gateway_process, shared_config

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "scan-model"
TENANT = "scanned"
TIGHT = "tight"  # rpm 1: its second request is refused 429
SECRET_PIECE = 12  # hex key secrets: every 12-char piece (8 hex chars occur in request ids)
TEXT_PIECE = 8  # admin token and pepper (URL-safe text): every 8-char piece


@dataclass
class Run:
    """What the run sent and received: each canary, each key, each completion."""

    gateway: str
    log: Path
    admin: dict[str, str]
    admin_token: str
    pepper: str
    canaries: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def canary(self, where: str) -> str:
        text = f"CANARY-{where}-{secrets.token_hex(4)}"
        self.canaries.append(text)
        return text


def _pieces(secret: str, size: int) -> Iterator[str]:
    for i in range(len(secret) - size + 1):
        yield secret[i : i + size]


def leaks(run: Run, text: str) -> list[str]:
    """What of the run's secrets and client texts `text` holds, named."""
    found = [f"canary {c}" for c in run.canaries if c in text]
    found += [f"completion {c!r}" for c in run.completions if c in text]
    for key in run.keys:
        secret = key.rsplit("-", 1)[-1]
        found += [f"piece {p} of a key secret" for p in _pieces(secret, SECRET_PIECE) if p in text]
    for name, value in (("admin token", run.admin_token), ("pepper", run.pepper)):
        found += [f"piece {p} of the {name}" for p in _pieces(value, TEXT_PIECE) if p in text]
    return found


@pytest_asyncio.fixture(name="gateway", scope="module", loop_scope="session")
async def gateway_fixture(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    tmp = tmp_path_factory.mktemp("log-scan")
    admin_token, pepper = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    extra = {
        "admin_token": admin_token,
        "key_pepper": pepper,
        "access_log": True,
        "log_level": "debug",
        "max_body_bytes": 64 * 1024,
        "request_policy": {"max_data_url_bytes": 32 * 1024},  # (within the body)
        "auth": {"failure_limit": 100_000},  # the 401s below never throttle the admin's calls
        "files": {"dir": str(tmp / "files")},
    }
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=12)) as sim,
    ):
        config = shared_config(
            tmp / "gateway.yaml", redis_url=redis_url, model=MODEL, sim=sim, extra=json.dumps(extra)
        )
        log = tmp / "gateway.log"
        async with gateway_process(config, log=log) as gw:
            admin = {"authorization": f"Bearer {admin_token}"}
            yield Run(gw.url, log, admin, admin_token, pepper)


async def _call(
    http: aiohttp.ClientSession, run: Run, name: str, method: str, path: str, **kwargs: Any
) -> Any:
    async with http.request(method, f"{run.gateway}{path}", **kwargs) as resp:
        run.statuses[name] = resp.status
        body = await resp.read()
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


async def _admin_routes(http: aiohttp.ClientSession, run: Run) -> tuple[str, str]:
    """Every /admin/v1 route; the keys of TENANT and TIGHT."""
    admin = run.admin
    await _call(
        http, run, "put tenant", "PUT", f"/admin/v1/tenants/{TENANT}", json={}, headers=admin
    )
    await _call(
        http, run, "put tight", "PUT", f"/admin/v1/tenants/{TIGHT}", json={"rpm": 1}, headers=admin
    )
    keys = []
    for tenant in (TENANT, TIGHT, TENANT):
        created = await _call(
            http,
            run,
            "create key",
            "POST",
            "/admin/v1/keys",
            json={"tenant": tenant},
            headers=admin,
        )
        keys.append(created)
        run.keys.append(created["key"])
    own, tight, spare = keys
    rotated = await _call(
        http, run, "rotate key", "POST", f"/admin/v1/keys/{own['id']}/rotate", headers=admin
    )
    run.keys.append(rotated["key"])
    await _call(
        http,
        run,
        "update key",
        "PATCH",
        f"/admin/v1/keys/{own['id']}",
        json={"name": run.canary("key name"), "tpm": 10**9},
        headers=admin,
    )
    await _call(http, run, "revoke key", "DELETE", f"/admin/v1/keys/{spare['id']}", headers=admin)
    for name, path in (
        ("list keys", f"/admin/v1/keys?tenant={TENANT}"),
        ("get key", f"/admin/v1/keys/{own['id']}"),
        ("list tenants", "/admin/v1/tenants"),
        ("get tenant", f"/admin/v1/tenants/{TENANT}"),
        ("engines", "/admin/v1/engines"),
    ):
        await _call(http, run, name, "GET", path, headers=admin)
    return rotated["key"], tight["key"]


async def _model_routes(run: Run, key: str) -> None:
    """Every OpenAI route, served; each text the client writes carries a canary."""
    async with openai.AsyncOpenAI(base_url=f"{run.gateway}/v1", api_key=key, max_retries=0) as oai:
        chat = await oai.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": run.canary("system")},
                {"role": "user", "content": run.canary("chat")},
            ],
        )
        run.completions.append(chat.choices[0].message.content or "")
        parts = []
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": run.canary("chat-stream")}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            parts += [c.delta.content or "" for c in chunk.choices]
        run.completions.append("".join(parts))
        text = await oai.completions.create(model=MODEL, prompt=run.canary("completions"))
        run.completions.append(text.choices[0].text)
        await oai.embeddings.create(model=MODEL, input=run.canary("embeddings"))
        response = await oai.responses.create(
            model=MODEL, input=run.canary("responses"), instructions=run.canary("instructions")
        )
        run.completions.append(response.output_text)
        await oai.responses.retrieve(response.id)
        with pytest.raises(openai.BadRequestError):
            await oai.responses.cancel(response.id)  # a synchronous response: refused
        await oai.responses.delete(response.id)
        await oai.models.list()
        await oai.models.retrieve(MODEL)
        messages = [
            {"role": "user", "content": run.canary("file")},
            {"role": "assistant", "content": run.canary("file-answer")},
        ]
        training = json.dumps({"messages": messages})
        uploaded = await oai.files.create(
            file=("train.jsonl", io.BytesIO(training.encode() + b"\n")), purpose="fine-tune"
        )
        await oai.files.list()
        await oai.files.retrieve(uploaded.id)
        assert training in (await oai.files.content(uploaded.id)).text
        await oai.files.delete(uploaded.id)
    assert all(len(c) > 20 for c in run.completions), run.completions


async def _usage_routes(http: aiohttp.ClientSession, run: Run, key: str) -> None:
    own = {"authorization": f"Bearer {key}"}
    for name, path, headers in (
        ("tenant usage", "/v1/usage", own),
        ("tenant records", "/v1/usage/records", own),
        ("admin usage", "/admin/v1/usage", run.admin),
        ("admin records", "/admin/v1/usage/records?format=csv", run.admin),
    ):
        await _call(http, run, name, "GET", path, headers=headers)


def _chat(content: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def _failing_routes(http: aiohttp.ClientSession, run: Run, key: str, tight: str) -> None:
    """Refusals, each with a canary in what it refuses."""
    own = {"authorization": f"Bearer {key}"}
    bad = {"authorization": f"Bearer {key[:-8]}{secrets.token_hex(4)}"}  # a wrong secret
    chat = "/v1/chat/completions"
    await _call(http, run, "bad key", "POST", chat, json=_chat(run.canary("badkey")), headers=bad)
    raw = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{run.canary("json")}'
    headers = {**own, "content-type": "application/json"}
    await _call(http, run, "bad json", "POST", chat, data=raw, headers=headers)
    await _call(
        http, run, "no model", "POST", chat, json=_chat(run.canary("404"), "nope"), headers=own
    )
    big = _chat(run.canary("too-large") + " x" * 40_000)
    await _call(http, run, "too large", "POST", chat, json=big, headers=own)
    fault = {"fail_status": 400, "fail_message": run.canary("engine-error")}
    await _call(
        http,
        run,
        "engine error",
        "POST",
        chat,
        json=_chat(run.canary("engine"), sim=fault),
        headers=own,
    )
    fault = {"fail_status": 500, "fail_message": run.canary("engine-500")}
    await _call(
        http,
        run,
        "engine 500",
        "POST",
        chat,
        json=_chat(run.canary("e500"), sim=fault),
        headers=own,
    )
    throttled = {"authorization": f"Bearer {tight}"}
    for name in ("tight ok", "tight 429"):
        await _call(http, run, name, "POST", chat, json=_chat(run.canary("429")), headers=throttled)


async def _metrics(http: aiohttp.ClientSession, run: Run) -> str:
    async with http.get(f"{run.gateway}/metrics", headers=run.admin) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_logs_and_metrics_hold_no_prompt_completion_key_or_token(gateway: Run) -> None:
    run = gateway
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        key, tight = await _admin_routes(http, run)
        await _model_routes(run, key)
        await _failing_routes(http, run, key, tight)
        await _usage_routes(http, run, key)
        metrics = await _metrics(http, run)
    assert run.statuses == {
        **dict.fromkeys(("put tenant", "put tight", "rotate key", "update key", "revoke key"), 200),
        "create key": 201,
        **dict.fromkeys(("list keys", "get key", "list tenants", "get tenant", "engines"), 200),
        "bad key": 401,
        "bad json": 400,
        "no model": 404,
        "too large": 413,
        "engine error": 400,
        "engine 500": 500,
        "tight ok": 200,
        "tight 429": 429,
        **dict.fromkeys(("tenant usage", "tenant records", "admin usage", "admin records"), 200),
    }
    await asyncio.sleep(0.5)  # the last log lines of the process are on their way
    log = await asyncio.to_thread(run.log.read_text)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "llmaas.access"]
    assert len(access) >= 30, "the access log did not capture the run"
    assert {line["logger"] for line in lines} > {"llmaas.access"}  # other loggers too
    # The scan finds what it looks for (a canary, a piece of a secret, the pepper).
    probe = f"{run.canaries[0]} x{run.keys[-1][-20:-5]}x {run.pepper[3:12]}"
    assert len(leaks(run, probe)) >= 3
    assert len(run.canaries) >= 14
    assert leaks(run, log) == []
    assert leaks(run, metrics) == []
    print(
        f"log scan: {len(run.canaries)} canaries, {len(run.completions)} completions, "
        f"{len(run.keys)} key secrets; {len(lines)} log lines ({len(access)} access), "
        f"{len(metrics.splitlines())} /metrics lines"
    )


_SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(\{.*\})?\s", re.M)


def _series(metrics: str) -> set[str]:
    """Every series (name and labels) of the /metrics text, without values."""
    return {m.group(1) + (m.group(2) or "") for m in _SERIES.finditer(metrics)}


async def _random_requests(
    http: aiohttp.ClientSession, run: Run, live_key: str, count: int
) -> list[str]:
    """Requests with made-up models, paths, keys (of made-up tenants) and headers; half with a
    live key, so made-up models get as far as the model lookup. The made-up values."""
    made_up = []
    for i in range(count):
        word = f"rnd{secrets.token_hex(6)}"
        made_up.append(word)
        fake_key = f"sk-llmaas-{secrets.token_hex(6)}-{secrets.token_hex(32)}"
        headers = {
            f"x-{word}": word,
            "user-agent": word,
            "authorization": f"Bearer {live_key if i % 2 else fake_key}",
        }
        method, path, body = (
            ("POST", "/v1/chat/completions", _chat("hi", word)),
            ("GET", f"/{word}/v1/{word}", None),
            ("GET", f"/v1/models/{word}", None),
            ("POST", "/v1/embeddings", {"model": word, "input": "hi"}),
            ("POST", f"/v1/{word}", {"model": MODEL}),
        )[i % 5]
        async with http.request(method, f"{run.gateway}{path}", json=body, headers=headers) as r:
            assert r.status >= 400, (path, r.status)
    return made_up


async def test_metric_labels_take_no_value_a_client_makes_up(gateway: Run) -> None:
    run = gateway
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await _call(http, run, "put", "PUT", "/admin/v1/tenants/labels", json={}, headers=run.admin)
        created = await _call(
            http, run, "key", "POST", "/admin/v1/keys", json={"tenant": "labels"}, headers=run.admin
        )
        await _random_requests(http, run, created["key"], 20)  # each kind of refusal once
        before = await _metrics(http, run)
        made_up = await _random_requests(http, run, created["key"], 200)
        after = await _metrics(http, run)
    # A label that took a client's value would add a series per request (200 made-up values);
    # a series or two of fixed labels may still appear meanwhile from earlier work (admissions
    # fetched ahead by the other test's keys, released as "refunded" when their shelf expires)
    new = _series(after) - _series(before)
    assert len(new) <= 4, sorted(new)
    assert len(_series(after)) > 20  # the series were read at all
    assert [w for w in made_up if w in after] == []
    print(f"labels: {len(_series(after))} series before and after {len(made_up)} requests")
