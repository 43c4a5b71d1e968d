"""Admission on the request path: headers, 429s, settlement to real usage, failure modes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.limits.estimate import prompt_tokens, reserved_tokens
from gateway.limits.prefetch import HEADROOM
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, OTHER, AuthStack, auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.key_cache import request_until_cached
from tests.support.raw_http import post_request
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello there"}]


async def test_rpm_headers_count_down_then_429(auth: AuthStack) -> None:
    key = await auth.new_key(rpm=3)
    async with auth.client(key) as oai:
        remaining = []
        for _ in range(3):
            raw = await oai.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        with pytest.raises(openai.RateLimitError) as info:
            await oai.chat.completions.create(model=MODEL, messages=HELLO)
    assert remaining == ["2", "1", "0"]
    error = info.value
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert int(error.response.headers["retry-after"]) >= 1
    wait_ms = int(error.response.headers["retry-after-ms"])  # the rpm window: most of a minute
    assert 0 < wait_ms <= 60_000
    assert int(error.response.headers["retry-after"]) == math.ceil(wait_ms / 1000)
    assert error.response.headers["x-ratelimit-limit-requests"] == "3"  # on the 429 as well
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "key scope" in error.message


TPM = 1000  # one token comes back every 60 ms


def assert_remaining(header: str, expected: int, started: float) -> None:
    """GCRA refills continuously: allow what the elapsed time gave back, nothing more."""
    refill = math.ceil((time.monotonic() - started) * TPM / 60)
    assert expected <= int(header) <= expected + refill


@asynccontextmanager
async def exact_gateway(auth: AuthStack) -> AsyncIterator[str]:
    """Another gateway on the stack's Redis and engine, fetching no admission ahead."""
    limits = auth.settings.limits.model_copy(update={"prefetch_max": 0})
    async with serve_asgi(create_app(auth.settings.model_copy(update={"limits": limits}))) as gw:
        yield gw


def exact_client(gateway: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)


async def test_a_busy_key_takes_admissions_fetched_ahead_and_each_is_counted(
    auth: AuthStack,
) -> None:
    """20 requests in a row at rpm 1000 (plenty of room): most take an admission fetched ahead
    (no round trip), the headers still count down one by one, and Redis's request log holds
    every request and every admission still on the shelf."""
    key = await auth.new_key(rpm=1000)
    before = await prefetched(auth, "used")
    async with auth.client(key) as oai:
        raws = [
            await oai.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
            for _ in range(20)
        ]
    used = await prefetched(auth, "used") - before
    remaining = [int(raw.headers["x-ratelimit-remaining-requests"]) for raw in raws]
    assert remaining == list(range(999, 979, -1))
    assert used >= 10, used
    logged = 0
    async for name in auth.redis.scan_iter(match="llmaas:{t:acme}:k:*:rpm"):
        logged = max(logged, await auth.redis.zcard(name))  # this key's is the busiest log
    # Left on the shelf: what the fills (1 with the 2nd, then 2, 4, 8, 16 asked for ahead at the
    # 3rd, 4th, 7th, 13th) left, 13, when each fill comes before the request after the one that
    # asked for it (a request that does not find it waits for it, and sizes double sooner);
    # never more than 1/HEADROOM of what remained of the limit.
    assert 20 <= logged <= 20 + 1000 // HEADROOM


async def prefetched(auth: AuthStack, outcome: str) -> float:
    async with auth.http.get(f"{auth.gateway}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    line = f'llmaas_ratelimit_prefetched_total{{outcome="{outcome}"}} '
    values = [float(row[len(line) :]) for row in text.splitlines() if row.startswith(line)]
    return values[0] if values else 0.0


async def test_tokens_settle_to_what_the_engine_reported(auth: AuthStack) -> None:
    key = await auth.new_key(tpm=TPM)
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 8}
    started = time.monotonic()
    async with auth.client(key) as oai:
        first = await oai.chat.completions.create(**body)
        second = await oai.chat.completions.with_raw_response.create(**body)
    assert first.usage is not None
    expected = TPM - first.usage.total_tokens - reserved_tokens(body, 1024)
    assert_remaining(second.headers["x-ratelimit-remaining-tokens"], expected, started)


async def test_a_completion_is_reserved_what_its_engine_generates(auth: AuthStack) -> None:
    """vLLM's /v1/completions reads max_tokens only: max_completion_tokens 5 beside max_tokens
    50 made 50 tokens on a real vLLM. The gateway reserved the 5, so a request far past the
    tpm (and any number of them at once) was admitted."""
    key = await auth.new_key(tpm=TPM)
    async with auth.client(key) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            await oai.completions.create(
                model=MODEL,
                prompt="hi",
                max_tokens=100 * TPM,
                extra_body={"max_completion_tokens": 5},
            )
    assert "Request too large" in info.value.message


async def test_max_tokens_past_the_context_is_the_engines_400_not_too_large(
    auth: AuthStack,
) -> None:
    """A max_tokens the model's context cannot hold (2,048 on the simulator) was reserved
    whole: on a tpm that fits the context, a 429 "Request too large" (the SDK's
    RateLimitError, never retried) for what vLLM refuses as a bad request."""
    key = await auth.new_key(tpm=3000)
    async with auth.client(key) as oai:
        with pytest.raises(openai.BadRequestError) as info:
            await oai.completions.create(model=MODEL, prompt="hi", max_tokens=50_000)
    assert info.value.param == "max_tokens"


async def test_a_request_too_large_for_the_tpm_names_the_routes_output_field(
    auth: AuthStack,
) -> None:
    """Found by review: the Responses API's refusal said "Lower max_tokens", a field it does
    not have: its own is max_output_tokens."""
    key = await auth.new_key(tpm=100)
    async with auth.client(key) as oai:
        with pytest.raises(openai.RateLimitError) as responses:
            await oai.responses.create(model=MODEL, input="hi", max_output_tokens=500)
        with pytest.raises(openai.RateLimitError) as chat:
            await oai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=500
            )
    assert "Lower max_output_tokens or the prompt." in responses.value.message
    assert "Lower max_tokens or the prompt." in chat.value.message


async def test_a_request_the_engine_keeps_generating_is_reserved_to_the_context_end(
    auth: AuthStack,
) -> None:
    """ignore_eos without max_tokens runs to the context's end (2,048 on the simulator): it
    was reserved the default 1,024, and admitted on a tpm of 1,500. min_tokens likewise."""
    key = await auth.new_key(tpm=1500)
    async with auth.client(key) as oai:
        for extra in ({"ignore_eos": True}, {"min_tokens": 1600}):
            with pytest.raises(openai.RateLimitError) as info:
                await oai.completions.create(model=MODEL, prompt="hi", extra_body=extra)
            assert "Request too large" in info.value.message
        answer = await oai.completions.create(  # the default alone fits
            model=MODEL, prompt="hi", extra_body={"ignore_eos": False}
        )
    assert answer.choices


async def test_a_token_bucket_a_few_tokens_short_says_to_retry_in_ms(auth: AuthStack) -> None:
    """A refusal by tpm says when the bucket has room to the millisecond (`retry-after-ms`,
    which the SDK reads first): Retry-After alone made the SDK wait a whole second for a few
    tokens, ~60 ms each at this tpm. The SDK's retry after it then gets through."""
    key = await auth.new_key(tpm=TPM)
    body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 8}
    async with auth.client(key) as oai:
        first = await oai.chat.completions.create(**body)
        assert first.usage is not None
        left = TPM - first.usage.total_tokens  # (and a token back every 60 ms since)
        over = {**body, "max_tokens": left - prompt_tokens(body) + 10}  # ~10 tokens short
        with pytest.raises(openai.RateLimitError) as info:
            await oai.with_options(max_retries=0).chat.completions.create(**over)
        headers = info.value.response.headers
        wait_ms = int(headers["retry-after-ms"])
        assert 0 < wait_ms < 1000, headers  # a few tokens' worth, not a second
        assert headers["retry-after"] == "1"
        assert (await oai.with_options(max_retries=2).chat.completions.create(**over)).choices


async def test_a_raised_tpm_admits_at_once_what_it_adds(auth: AuthStack) -> None:
    """Found 2026-12-07: the tokens a key had used kept the time they took at its old tpm, so
    after `keys update --tpm` raised it tenfold, a key that had used its minute still waited
    most of a minute: 429 for a request the new limit had ample room for."""
    key = await auth.new_key(tpm=TPM)
    async with auth.client(key) as oai:
        first = await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=970)
        assert first.usage is not None
        assert first.usage.total_tokens > 950  # its minute
        again: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 900}
        with pytest.raises(openai.RateLimitError):
            await oai.chat.completions.create(**again)
        status, changed = await auth.admin("PATCH", f"/keys/{key.split('-')[2]}", {"tpm": 10_000})
        assert (status, changed["tpm"]) == (200, 10_000)
        # the ~970 tokens used are ~6 s at the new rate, this one ~5.5 s more: room at once
        assert (await oai.chat.completions.create(**again)).choices


async def test_stream_usage_settles_too_and_engine_refusals_are_refunded(auth: AuthStack) -> None:
    """Exact figures in the third request's headers: this gateway asks Redis for every request
    (an admission fetched ahead carries the figures Redis answered when it was fetched)."""
    key = await auth.new_key(tpm=TPM)
    stream_body: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 5}
    started = time.monotonic()
    async with exact_gateway(auth) as gateway, exact_client(gateway, key) as oai:
        stream = await oai.chat.completions.create(
            **stream_body, stream=True, stream_options={"include_usage": True}
        )
        usage = [c.usage async for c in stream if c.usage is not None][-1]
        with pytest.raises(openai.BadRequestError):  # refused by the engine: costs nothing
            await oai.chat.completions.create(
                **stream_body, extra_body={"sim": {"fail_status": 400}}
            )
        probe = await oai.chat.completions.with_raw_response.create(**stream_body)
    expected = TPM - usage.total_tokens - reserved_tokens(stream_body, 1024)
    assert_remaining(probe.headers["x-ratelimit-remaining-tokens"], expected, started)


async def test_concurrency_limit_holds_and_frees(auth: AuthStack) -> None:
    key = await auth.new_key(max_concurrency=2)
    slow: Any = {"sim": {"ttft_ms": 400}}
    async with auth.client(key) as oai:
        results = await asyncio.gather(
            *(
                oai.chat.completions.create(model=MODEL, messages=HELLO, extra_body=slow)
                for _ in range(6)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(refused) == 4
        assert "in flight" in refused[0].message
        assert refused[0].response.headers["retry-after"] == "1"  # not the lease's expiry
        await oai.chat.completions.create(model=MODEL, messages=HELLO)  # slots are free again


async def test_bodies_still_arriving_count_against_the_concurrency_limit(auth: AuthStack) -> None:
    """A key sending its bodies slowly held the process's request slots without a lease (one is
    taken once the body is read): past its max_concurrency it is now refused before its body
    is read. Its slots come back when those requests end, and other keys are not affected."""
    key = await auth.new_key(max_concurrency=2)
    head, payload = post_request(
        "/v1/chat/completions", {"model": MODEL, "messages": HELLO}, f"Bearer {key}"
    )
    url = urlsplit(auth.gateway)
    trickles = []
    async with auth.client(key) as oai, auth.client(await auth.new_key()) as other:
        await oai.chat.completions.create(model=MODEL, messages=HELLO)  # its key now cached
        for _ in range(2):
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            writer.write(head + payload[:10])  # and the rest never comes
            await writer.drain()
            trickles.append((reader, writer))
        try:
            refused = None
            async with asyncio.timeout(10):
                while refused is None:  # until the two have reached the gateway's handler
                    try:
                        await oai.chat.completions.create(model=MODEL, messages=HELLO)
                    except openai.RateLimitError as exc:
                        refused = exc
                    await asyncio.sleep(0.02)
            assert "in flight at the key scope: the limit is 2" in refused.message
            assert refused.response.headers["retry-after"] == "1"
            await other.chat.completions.create(model=MODEL, messages=HELLO)  # another key: 200
        finally:
            for _, writer in trickles:
                writer.close()
        async with asyncio.timeout(10):
            while True:  # the two ended with their connections: the slots are free again
                try:
                    await oai.chat.completions.create(model=MODEL, messages=HELLO)
                    break
                except openai.RateLimitError:
                    await asyncio.sleep(0.02)


async def test_tenant_limit_applies_to_all_its_keys(auth: AuthStack) -> None:
    status, _ = await auth.admin("PUT", "/tenants/shared", {"rpm": 2})
    assert status == 200
    keys = []
    for _ in range(2):
        status, body = await auth.admin("POST", "/keys", {"tenant": "shared", "rpm": 100})
        keys.append(body["key"])
    async with auth.client(keys[0]) as a, auth.client(keys[1]) as b:
        await a.models.list()  # /v1/models is not rate limited
        await a.chat.completions.create(model=OTHER, messages=HELLO)
        await b.chat.completions.create(model=OTHER, messages=HELLO)
        with pytest.raises(openai.RateLimitError) as info:
            await a.chat.completions.create(model=OTHER, messages=HELLO)
    assert "tenant scope" in info.value.message


@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("open", 200)])
async def test_redis_down_follows_the_failure_mode(mode: str, status: int, tmp_path: Path) -> None:
    async with running_sim(SimConfig(models=[MODEL])) as sim:
        redis_cm = running_redis(None)
        redis_url = await redis_cm.__aenter__()
        settings = auth_settings(sim, redis_url, tmp_path / "spill").model_copy(deep=True)
        settings.limits.failure_mode = mode  # type: ignore[assignment]
        settings.redis_timeout_s = 0.2
        # Every request asks Redis: with admissions fetched ahead, one taken from the shelf
        # after Redis went away would be served whatever the failure mode.
        settings.limits.prefetch_max = 0
        try:
            app = create_app(settings)
            async with serve_asgi(app) as gw, aiohttp.ClientSession() as http:
                # The key cache empties once the invalidation feed is confirmed: on a busy
                # machine that came after the request meant to cache the key (a 503 from the
                # key check, not the limiter, once Redis was down).
                await asyncio.wait_for(app.state.gateway.auth_feed.subscribed.wait(), 10)
                # A tenant that exists stays cached (an absent one only for a second).
                await http.put(f"{gw}/admin/v1/tenants/f", json={"rpm": 1000}, headers=ADMIN)
                async with http.post(
                    f"{gw}/admin/v1/keys", json={"tenant": "f", "rpm": 100}, headers=ADMIN
                ) as resp:
                    created = await resp.json()
                headers = {"authorization": f"Bearer {created['key']}"}
                body = {"model": MODEL, "messages": HELLO}
                url = f"{gw}/v1/chat/completions"

                async def served() -> None:
                    async with http.post(url, json=body, headers=headers) as resp:
                        assert resp.status == 200

                await request_until_cached(app.state.gateway.auth, created["id"], "f", served)
                await redis_cm.__aexit__(None, None, None)
                async with asyncio.timeout(5), http.post(url, json=body, headers=headers) as resp:
                    assert resp.status == status
                    if status == 503:
                        assert (await resp.json())["error"]["code"] == "rate_limiter_unavailable"
                        assert resp.headers["retry-after"] == "1"
                async with http.get(f"{gw}/metrics", headers=ADMIN) as resp:
                    assert (
                        f'llmaas_ratelimit_unavailable_total{{failure_mode="{mode}"}} 1.0'
                        in await resp.text()
                    )
        finally:
            await redis_cm.__aexit__(None, None, None)
