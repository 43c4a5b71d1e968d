"""Every error, from every layer, in OpenAI's shape with the status OpenAI uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from tests.integration.conftest import ADMIN, DEAD_MODEL, MODEL, AuthStack, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def post(stack: Stack, path: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with stack.http.post(
        f"{stack.gateway}{path}", data=data, headers={"content-type": "application/json"}
    ) as resp:
        payload: dict[str, Any] = orjson.loads(await resp.read())
        assert resp.headers["x-request-id"]
        return resp.status, payload


def assert_openai_error(payload: dict[str, Any]) -> dict[str, Any]:
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


@pytest.mark.parametrize(
    ("path", "body", "param", "needle"),
    [
        ("/v1/chat/completions", b'{"model": "x", "messages": [', None, "parse the JSON"),
        ("/v1/chat/completions", b"[1, 2]", None, "JSON object"),
        ("/v1/chat/completions", b"", None, "empty"),
        ("/v1/chat/completions", {"messages": []}, "model", "'model'"),
        ("/v1/chat/completions", {"model": MODEL}, "messages", "'messages'"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, "messages", "an array"),
        ("/v1/chat/completions", {"model": 7, "messages": []}, "model", "a string"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream", "a boolean"),
        (  # vLLM would read "true" as true: the gateway, which meters by it, says so
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": "true"}},
            "stream_options.include_usage",
            "a boolean",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "a", "stream_options": {"continuous_usage_stats": 1}},
            "stream_options.continuous_usage_stats",
            "a boolean",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "Missing required parameter",
        ),
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}],
                    },
                ],
            },
            "messages[1].content[1].image_url",
            "Missing required parameter",
        ),
        ("/v1/completions", {"model": MODEL}, "prompt", "'prompt'"),
        (  # the same parts of a conversation embeddings take were sent on unchecked
            "/v1/embeddings",
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "Missing required parameter",
        ),
        (
            "/v1/embeddings",
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "input[0].content[0].text",
            "a string",
        ),
        (  # the simulator answered 500 (three ejected its engine), vLLM a 400 naming nothing
            "/v1/responses",
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
            "Missing required parameter",
        ),
        (
            "/v1/responses",
            {
                "model": MODEL,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": ["a"]}]}],
            },
            "input[0].content[0].text",
            "a string",
        ),
        ("/v1/embeddings", {"model": MODEL, "input": 3}, "input", "string or an array"),
        (  # vLLM's binary embeddings: the body has no usage (it was recorded as 0 tokens)
            "/v1/embeddings",
            {"model": MODEL, "input": "hi", "encoding_format": "bytes"},
            "encoding_format",
            "could not be metered",
        ),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    stack: Stack, path: str, body: bytes | dict[str, Any], param: str | None, needle: str
) -> None:
    status, payload = await post(stack, path, body)
    assert status == 400
    error = assert_openai_error(payload)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert needle in error["message"]


async def test_a_prompt_over_the_context_is_context_length_exceeded_on_its_field(
    stack: Stack,
) -> None:
    """The simulator answers vLLM 0.32's refusal (`param` input_tokens), which the gateway names
    by the prompt's field, as tests/e2e does with the real engine; the simulator's own message
    had no `param`, so nothing on it reached that normalisation (found 2026-12-07)."""
    words = " ".join(["w"] * 3000)  # the simulator's context: 2,048 tokens
    chat = {**CHAT, "messages": [{"role": "user", "content": words}]}
    completion = {"model": MODEL, "prompt": words}
    for path, body, field in (
        ("/v1/chat/completions", chat, "messages"),
        ("/v1/chat/completions", {**chat, "stream": True}, "messages"),
        ("/v1/completions", completion, "prompt"),
    ):
        status, payload = await post(stack, path, body)
        error = assert_openai_error(payload)
        assert (status, error["param"], error["code"]) == (400, field, "context_length_exceeded")
        assert error["message"].startswith("This model's maximum context length is 2048 tokens")
    status, payload = await post(stack, "/v1/completions", {**completion, "prompt": "hi there"})
    assert status == 200


# vLLM 0.32's refusals, word for word: chat's boolean `logprobs` refused by its schema
# (serve/exception_handling/handlers/validation.py), its `top_logprobs` (the sampling `logprobs`)
# over the engine's bound (sampling_params.py), an embedding's `truncate_prompt_tokens` over the
# model's length (pooling/base/serving.py, no `param`).
NOT_A_BOOLEAN = (
    "1 validation error:\n  {'type': 'bool_parsing', 'loc': 'body.logprobs', 'msg': 'Input"
    " should be a valid boolean, unable to interpret input', 'input': '2'}"
)
TOO_MANY_LOGPROBS = (  # (an engine started with --max-logprobs 5: the gateway bounds it at 20)
    "Requested sample logprobs of 8, which is greater than max allowed: 5 (parameter=logprobs,"
    " value=8)"
)
TRUNCATION_OVER = (
    "truncate_prompt_tokens value is greater than max_model_len. Please request a smaller"
    " truncation size."
)


def engine_refusal(message: str, param: str | None = None) -> dict[str, Any]:
    """The `sim` field that has the simulator answer vLLM's 400 of `message` and `param`."""
    return {"sim": {"fail_status": 400, "fail_message": message, "fail_param": param}}


def said(error: openai.BadRequestError) -> tuple[str | None, str]:
    """A refusal's `param` and its message, as the gateway wrote it."""
    assert isinstance(error.body, dict)
    return error.param, error.body["message"]


async def test_an_engine_refusal_names_the_field_the_client_sent(auth: AuthStack) -> None:
    """vLLM names chat's `top_logprobs` by its sampling `logprobs`, and chat's own boolean
    `logprobs` by its place in the body: a client that sent `"logprobs": 2` was told 'top_logprobs'
    should be a valid boolean; an embedding's `truncate_prompt_tokens` over the model's length was
    refused naming no field (found 2026-12-07)."""
    hi: Any = [{"role": "user", "content": "hi"}]
    async with auth.client(await auth.new_key()) as oai:
        with pytest.raises(openai.BadRequestError) as boolean:
            await oai.chat.completions.create(
                model=MODEL,
                messages=hi,
                extra_body={"logprobs": 2, **engine_refusal(NOT_A_BOOLEAN, "body.logprobs")},
            )
        with pytest.raises(openai.BadRequestError) as count:
            await oai.chat.completions.create(
                model=MODEL,
                messages=hi,
                logprobs=True,
                extra_body={"top_logprobs": 8, **engine_refusal(TOO_MANY_LOGPROBS, "logprobs")},
            )
        with pytest.raises(openai.BadRequestError) as truncation:
            await oai.embeddings.create(
                model=MODEL,
                input="hi",
                extra_body={"truncate_prompt_tokens": 600, **engine_refusal(TRUNCATION_OVER)},
            )
    assert [said(error.value) for error in (boolean, count, truncation)] == [
        (
            "logprobs",
            "Invalid value for 'logprobs': Input should be a valid boolean, unable to interpret"
            " input (got '2').",
        ),
        ("top_logprobs", TOO_MANY_LOGPROBS.replace("logprobs", "top_logprobs")),
        ("truncate_prompt_tokens", TRUNCATION_OVER),
    ]


async def test_an_encoding_format_the_gateway_does_not_relay_is_refused_as_such(
    auth: AuthStack,
) -> None:
    """vLLM's refusal of an `encoding_format` it lacks listed its binary ones (which the gateway
    refuses) among those to send, and a null as 'None' (found 2026-12-07)."""
    async with auth.client(await auth.new_key()) as oai:
        for value, message in (
            ("foo", "Invalid 'encoding_format': 'foo'; expected 'float' or 'base64'."),
            (None, "Invalid type for 'encoding_format': expected a string, but got null instead."),
        ):
            with pytest.raises(openai.BadRequestError) as info:
                await oai.embeddings.create(
                    model=MODEL, input="hi", extra_body={"encoding_format": value}
                )
            assert said(info.value) == ("encoding_format", message)
        for encoding in ("float", "base64"):
            served = await oai.embeddings.create(model=MODEL, input="hi", encoding_format=encoding)
            assert len(served.data) == 1


async def test_body_over_the_limit_is_413(stack: Stack) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}
    status, payload = await post(stack, "/v1/chat/completions", big)
    assert status == 413
    assert "65536 bytes" in assert_openai_error(payload)["message"]


async def test_bodies_fastapi_reads_are_bounded(stack: Stack) -> None:
    """FastAPI reads a body whole before a route runs: a 200 MB POST to /admin/v1/keys was once
    held in memory (675 MB) before its answer. With the admin token, a body over the bound is
    413 as it is read; without it, 401 before any of it is read (credential_gate.py)."""
    big = b'{"tenant": "acme", "name": "' + b"x" * 70_000 + b'"}'

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it is read
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    for path, data, headers in (
        ("/admin/v1/keys", big, ADMIN),
        ("/admin/v1/keys", chunked(), ADMIN),
        ("/v1/fine_tuning/jobs", big, {}),
    ):
        async with stack.http.post(f"{stack.gateway}{path}", data=data, headers=headers) as resp:
            assert resp.status == 413, path
            error = assert_openai_error(orjson.loads(await resp.read()))
        assert (error["code"], "65536 bytes" in error["message"]) == ("request_too_large", True)
    for data in (big, big[:1000]):  # no token: refused whatever the body's size
        async with stack.http.post(f"{stack.gateway}/admin/v1/keys", data=data) as resp:
            assert resp.status == 401
    status, _ = await post(stack, "/v1/fine_tuning/jobs", {"model": MODEL})
    assert status != 413


async def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    async with openai.AsyncOpenAI(base_url=f"{stack.gateway}/v1", api_key="x") as oai:
        with pytest.raises(openai.NotFoundError) as info:
            await oai.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_unknown_route_and_wrong_method_are_openai_shaped(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/v1/nothing-here") as resp:
        assert resp.status == 404
        assert assert_openai_error(await resp.json())["code"] == "unknown_url"
    async with stack.http.get(f"{stack.gateway}/v1/chat/completions") as resp:
        assert resp.status == 405
        assert resp.headers["allow"] == "POST"
        assert assert_openai_error(await resp.json())["code"] == "method_not_allowed"
    async with stack.http.put(f"{stack.gateway}/v1/models/{MODEL}") as resp:
        assert resp.status == 405
        assert resp.headers["allow"] == "DELETE, GET, HEAD"  # every route of the path
    trailing = ("POST", "/v1/chat/completions/"), ("GET", "/v1/usage/"), ("GET", "/v1/models/")
    for method, path in (*trailing, ("DELETE", "/v1/models/")):
        url = f"{stack.gateway}{path}"  # unknown paths: no redirect to the one without "/"
        async with stack.http.request(method, url, allow_redirects=False) as resp:
            assert resp.status == 404
            assert assert_openai_error(await resp.json())["code"] == "unknown_url"


async def test_head_is_answered_wherever_get_is(stack: Stack) -> None:
    """RFC 9110: the GET's status and headers, no body."""
    async with stack.http.get(f"{stack.gateway}/v1/models") as resp:
        length = resp.headers["content-length"]
        assert resp.status == 200
    async with stack.http.head(f"{stack.gateway}/v1/models") as resp:
        assert resp.status == 200
        assert resp.headers["content-length"] == length
        assert resp.headers["content-type"] == "application/json"
        assert await resp.read() == b""
    async with stack.http.head(f"{stack.gateway}/v1/chat/completions") as resp:
        assert resp.status == 405  # no GET there either
        assert resp.headers["allow"] == "POST"


async def test_no_reachable_engine_is_503_with_retry_after(stack: Stack) -> None:
    """README: with no engine up clients get the gateway's 503 'with Retry-After and the
    reason'; engine_unavailable had no Retry-After (an engine comes back within 1 s at best)."""
    body = orjson.dumps({**CHAT, "model": DEAD_MODEL})
    headers = {"content-type": "application/json"}
    async with stack.http.post(
        f"{stack.gateway}/v1/chat/completions", data=body, headers=headers
    ) as resp:
        assert resp.status == 503
        assert resp.headers["retry-after"] == "1"
        assert assert_openai_error(await resp.json())["code"] == "engine_unavailable"


async def test_usage_without_redis_is_a_503_no_wait_mends(stack: Stack) -> None:
    # OpenAI's SDKs retry a 503 unless told not to: no wait gives a gateway without Redis a ledger.
    async with stack.http.get(f"{stack.gateway}/admin/v1/usage", headers=ADMIN) as resp:
        assert resp.status == 503
        assert resp.headers["x-should-retry"] == "false"
        assert "retry-after" not in resp.headers
        assert assert_openai_error(await resp.json())["code"] == "no_ledger"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/v1/keys"), ("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs")],
)
async def test_every_api_that_keeps_its_state_in_redis_says_no_wait_mends(
    stack: Stack, method: str, path: str
) -> None:
    """They answered code null and no x-should-retry: the SDKs retried them."""
    async with stack.http.request(method, f"{stack.gateway}{path}", headers=ADMIN) as resp:
        assert resp.status == 503
        assert resp.headers["x-should-retry"] == "false"
        error = assert_openai_error(await resp.json())
        assert error["code"] == "no_redis"
        assert "needs Redis (redis_url), and none is configured" in error["message"]


async def test_engine_that_does_not_answer_in_time_is_504(stack: Stack) -> None:
    status, payload = await post(stack, "/v1/chat/completions", {**CHAT, "sim": {"hang": True}})
    assert status == 504
    assert assert_openai_error(payload)["code"] == "engine_timeout"


@pytest.mark.parametrize("status", [400, 422, 500, 503])
async def test_engine_errors_keep_status_and_message(stack: Stack, status: int) -> None:
    body = {**CHAT, "sim": {"fail_status": status, "fail_message": f"engine said {status}"}}
    got, payload = await post(stack, "/v1/chat/completions", body)
    assert got == status
    error = assert_openai_error(payload)
    assert error["message"] == f"engine said {status}"


async def test_an_engine_whose_core_died_is_a_retryable_503(stack: Stack) -> None:
    """vLLM answers every request 500 "EngineCore encountered an issue. See stack trace (above)
    …" once its engine core is gone, until it is restarted: relayed as it was, with no
    Retry-After and a stack trace the client cannot see."""
    said = "EngineCore encountered an issue. See stack trace (above) for the root cause."
    for stream in (False, True):
        body = {**CHAT, "stream": stream, "sim": {"fail_status": 500, "fail_message": said}}
        async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp:
            error = assert_openai_error(await resp.json())
            assert (resp.status, error["code"]) == (503, "engine_unavailable")
            assert resp.headers["retry-after"] == "1"
            assert "stack trace" not in error["message"]


async def test_engine_detail_body_is_normalised(stack: Stack) -> None:
    body = {**CHAT, "sim": {"fail_status": 404, "fail_body": "detail"}}
    status, payload = await post(stack, "/v1/chat/completions", body)
    assert status == 404
    assert_openai_error(payload)


async def test_engine_dropping_the_connection_is_502(stack: Stack) -> None:
    status, payload = await post(
        stack, "/v1/chat/completions", {**CHAT, "sim": {"drop": "before_headers"}}
    )
    assert status == 502
    assert assert_openai_error(payload)["code"] == "engine_disconnected"
    assert payload["error"]["message"].startswith("The engine closed the connection before answ")


async def test_engine_dropping_the_connection_midway_says_so(stack: Stack) -> None:
    """A non-streaming answer is collected from a stream: cut after 3 chunks, the engine had
    begun answering, and the 502 says so."""
    body = {**CHAT, "max_tokens": 20, "sim": {"cut_after": 3}}
    status, payload = await post(stack, "/v1/chat/completions", body)
    assert status == 502
    assert assert_openai_error(payload)["code"] == "engine_disconnected"
    assert "before its answer was complete" in payload["error"]["message"]


async def test_stream_cut_midway_ends_with_one_error_frame_then_done(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 20, "sim": {"cut_after": 3}}
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        raw = await resp.read()
    frames = [f for f in raw.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    error = orjson.loads(frames[-2].removeprefix(b"data: "))
    assert assert_openai_error(error)["code"] == "engine_disconnected"
    assert "before its answer was complete" in error["error"]["message"]  # it had begun
    assert sum(b'"error"' in f for f in frames) == 1
    assert len(frames) >= 5  # the content that did arrive was relayed first


async def test_stream_engine_silent_too_long_ends_with_timeout_frame(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 3, "sim": {"itl_ms": 4000}}
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
    frames = [f for f in raw.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]"
    assert assert_openai_error(orjson.loads(frames[-2][6:]))["code"] == "engine_timeout"


async def test_streaming_request_refused_by_engine_is_a_plain_http_error(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "sim": {"fail_status": 400, "fail_message": "bad"}}
    status, payload = await post(stack, "/v1/chat/completions", body)
    assert status == 400
    assert assert_openai_error(payload)["message"] == "bad"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("engine_status", "retry_after"), [(503, "1"), (429, "1"), (500, None)])
async def test_an_engine_busy_answer_relayed_says_when_to_retry(
    stack: Stack, stream: bool, engine_status: int, retry_after: str | None
) -> None:
    """An engine's 503 (starting, overloaded) reached the client with no Retry-After, unlike
    the gateway's own 503s: OpenAI's SDKs then retried on their own short backoff."""
    sim = {"fail_status": engine_status, "fail_message": "engine busy"}
    body = orjson.dumps({**CHAT, "stream": stream, "sim": sim})
    async with stack.http.post(f"{stack.gateway}/v1/chat/completions", data=body) as resp:
        assert resp.status == engine_status
        assert resp.headers.get("retry-after") == retry_after
        assert assert_openai_error(orjson.loads(await resp.read()))["message"] == "engine busy"
