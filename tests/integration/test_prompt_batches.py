"""Batched prompts through real HTTP: every prompt counts against tpm, and batches have a cap."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import pytest

from tests.integration.conftest import MODEL, AuthStack
from tests.integration.test_limits import TPM, assert_remaining

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN_BATCH = [list(range(1, 21)) for _ in range(200)]  # 4,000 prompt tokens in 200 prompts
ROUTES = [("/v1/completions", "prompt"), ("/v1/embeddings", "input")]


async def post(auth: AuthStack, key: str, path: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    """Status, JSON body and headers of one POST with `key`."""
    headers = {"authorization": f"Bearer {key}"}
    async with auth.http.post(f"{auth.gateway}{path}", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


@pytest.mark.parametrize(("path", "field"), ROUTES)
async def test_a_batch_larger_than_tpm_is_refused_as_too_large(
    auth: AuthStack, path: str, field: str
) -> None:
    key = await auth.new_key(tpm=TPM)
    body = {"model": MODEL, field: TOKEN_BATCH, "max_tokens": 1}
    status, payload, headers = await post(auth, key, path, body)
    assert status == 429, payload
    error = payload["error"]
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert "Request too large" in error["message"]
    assert headers["x-should-retry"] == "false"  # no wait makes room: the SDKs don't retry
    assert "retry-after" not in headers


async def test_a_batch_within_tpm_is_admitted_and_reserves_every_prompt(auth: AuthStack) -> None:
    key = await auth.new_key(tpm=TPM)
    body = {"model": MODEL, "prompt": TOKEN_BATCH[:10], "max_tokens": 1, "n": 2}
    started = time.monotonic()
    status, payload, headers = await post(auth, key, "/v1/completions", body)
    assert status == 200, payload
    assert len(payload["choices"]) == 20  # n choices per prompt
    # reserved: 10 prompts x 20 ids, plus 1 token x 10 prompts x 2 choices
    assert_remaining(headers["x-ratelimit-remaining-tokens"], TPM - 220, started)


@pytest.mark.parametrize(("path", "field"), ROUTES)
async def test_a_batch_over_the_cap_is_400_naming_the_field(
    auth: AuthStack, path: str, field: str
) -> None:
    key = await auth.new_key()
    status, payload, _ = await post(auth, key, path, {"model": MODEL, field: ["hi"] * 2049})
    assert status == 400
    error = payload["error"]
    assert error["param"] == field
    assert error["code"] == "too_many_prompts"
    assert "2048" in error["message"]


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (["one", 2], "invalid_type"),
        ([[1, 2], [3, "four"]], "invalid_type"),
        ([[1, 2], 3], "invalid_type"),
        ([[1], []], "invalid_type"),
        ([1.5], "invalid_type"),
        ([True], "invalid_type"),
        ([], "empty_array"),
    ],
)
async def test_a_malformed_prompt_is_400_naming_the_field(
    auth: AuthStack, value: Any, code: str
) -> None:
    key = await auth.new_key()
    status, payload, _ = await post(auth, key, "/v1/completions", {"model": MODEL, "prompt": value})
    assert status == 400
    error = payload["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "prompt",
        code,
    )
    assert "Invalid 'prompt'" in error["message"]


async def test_the_openai_client_does_not_retry_a_request_too_large(auth: AuthStack) -> None:
    """The SDK retries a 429 twice by default (after Retry-After); a request larger than the
    limit is refused again whatever the wait, so it is answered with x-should-retry: false."""
    key = await auth.new_key(tpm=TPM)
    attempts: list[str] = []

    async def count(request: httpx2.Request) -> None:
        attempts.append(request.url.path)

    async with (
        httpx2.AsyncClient(event_hooks={"request": [count]}) as http,
        openai.AsyncOpenAI(base_url=f"{auth.gateway}/v1", api_key=key, http_client=http) as oai,
    ):
        with pytest.raises(openai.RateLimitError) as info:
            await oai.completions.create(model=MODEL, prompt=TOKEN_BATCH, max_tokens=1)
    assert "Request too large" in info.value.message
    assert attempts == ["/v1/completions"]  # one attempt, not three
