"""Usage metering against a real Redis and the simulator: one correct record per request that
reached an engine, whatever its outcome; retries that never count twice; the usage queries."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import openai
import orjson
import pytest
from redis.asyncio import Redis

from gateway.limits.estimate import prompt_estimates, prompt_tokens
from gateway.metering.ledger import log_key
from gateway.sim.text import text_prompts
from tests.integration.conftest import ADMIN, DEAD_MODEL, MODEL
from tests.integration.metering_fixture import TOKENS, Meter, meter_fixture  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello there"}]


def rid(request_id: str) -> dict[str, str]:
    return {"x-request-id": request_id}


async def _abandon_stream(meter: Meter, key: str, request_id: str, frames: int) -> None:
    """Read `frames` content frames of a slow stream, then hang up."""
    body = {
        "model": MODEL,
        "messages": HELLO,
        "stream": True,
        "max_tokens": 200,
        "sim": {"itl_ms": 40},
    }
    headers = {"authorization": f"Bearer {key}", **rid(request_id)}
    url = f"{meter.gateway}/v1/chat/completions"
    async with meter.http.post(url, json=body, headers=headers) as resp:
        seen = 0
        async for line in resp.content:
            if (
                line.startswith(b"data: {")
                and b'"content":"' in line
                and b'"content":""' not in line
            ):
                seen += 1
                if seen == frames:
                    break


async def test_every_outcome_is_one_record_with_the_tokens_it_used(meter: Meter) -> None:
    key = await meter.new_key("outcomes")
    async with meter.client(key) as oai:
        plain = await oai.chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers=rid("ok-plain")
        )
        quiet = [
            c
            async for c in await oai.chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, extra_headers=rid("ok-stream")
            )
        ]
        told = [
            c
            async for c in await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=rid("ok-stream-usage"),
            )
        ]
        embedded = await oai.embeddings.create(
            model=MODEL, input="some text", extra_headers=rid("ok-embed")
        )
        with pytest.raises(openai.BadRequestError):
            await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                extra_body={"sim": {"fail_status": 400}},
                extra_headers=rid("rejected"),
            )
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                extra_body={"sim": {"fail_status": 500}},
                extra_headers=rid("engine-500"),
            )
        with pytest.raises(openai.APIError):
            async for _ in await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                stream=True,
                extra_body={"sim": {"cut_after": 3}},
                extra_headers=rid("engine-cut"),
            ):
                pass
        with pytest.raises(openai.APIStatusError) as timed_out:
            await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                extra_body={"sim": {"hang": True}},
                extra_headers=rid("timeout"),
            )
        assert timed_out.value.status_code == 504
        with pytest.raises(openai.APIStatusError) as unreachable:
            await oai.chat.completions.create(
                model=DEAD_MODEL, messages=HELLO, extra_headers=rid("no-engine")
            )
        assert unreachable.value.status_code == 503
    await _abandon_stream(meter, key, "left", frames=3)

    records = {r.request_id: r for r in await meter.wait_records("outcomes", 9)}
    assert len(records) == 9  # one each; none for the request no engine received
    assert "no-engine" not in records

    assert plain.usage is not None
    ok = records["ok-plain"]
    assert (ok.outcome, ok.status, ok.stream) == ("ok", 200, False)
    assert (ok.prompt_tokens, ok.completion_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
    )
    assert (ok.tenant, ok.model, ok.route) == ("outcomes", MODEL, "chat/completions")
    assert key.split("-")[2] == ok.key_id

    # A stream whose client asked for no usage is billed all the same, and saw none.
    assert all(c.usage is None for c in quiet)
    stream = records["ok-stream"]
    assert (stream.outcome, stream.stream) == ("ok", True)
    assert (stream.prompt_tokens, stream.completion_tokens) == (ok.prompt_tokens, TOKENS)
    assert stream.ttft_ms is not None

    final = told[-1].usage
    assert final is not None
    assert all(c.usage is None for c in told[:-1])
    billed = records["ok-stream-usage"]
    assert (billed.prompt_tokens, billed.completion_tokens) == (
        final.prompt_tokens,
        final.completion_tokens,
    )

    embed = records["ok-embed"]
    assert (embed.route, embed.prompt_tokens) == ("embeddings", embedded.usage.prompt_tokens)
    assert embed.completion_tokens == 0

    for request_id, outcome, status in (
        ("rejected", "rejected", 400),
        ("engine-500", "engine_error", 500),
        ("timeout", "timeout", 504),
    ):
        failed = records[request_id]
        assert (failed.outcome, failed.status, failed.total_tokens) == (outcome, status, 0)

    cut = records["engine-cut"]  # billed for the three tokens it was sent
    assert (cut.outcome, cut.completion_tokens, cut.prompt_tokens) == (
        "engine_error",
        3,
        ok.prompt_tokens,
    )

    left = records["left"]
    assert (left.outcome, left.status) == ("client_disconnected", 499)
    # Billed what the engine generated until the gateway saw the hang-up: what the client
    # read, plus at most the frames in flight (40 ms apart).
    assert 3 <= left.completion_tokens <= 6, left


async def _read_into(stream: Any, chunks: list[Any]) -> None:
    async for chunk in stream:
        chunks.append(chunk)


async def test_a_timeout_bills_what_reached_the_client_and_nothing_more(meter: Meter) -> None:
    """The engine generates, slowly, past the gateway's timeouts (1 s here). A non-streaming
    answer is a 504, billed nothing though the engine had made tokens (the client got an error,
    and its SDK retries); a stream that fell silent midway ends with a timeout frame, billed
    the tokens it carried."""
    key = await meter.new_key("timeouts")
    async with meter.client(key) as oai:
        with pytest.raises(openai.APIStatusError) as timed_out:
            await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                extra_body={"sim": {"itl_ms": 300}},  # 8 tokens in ~2.4 s
                extra_headers=rid("slow-plain"),
            )
        assert timed_out.value.status_code == 504
        silent = await oai.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            extra_body={"sim": {"itl_ms": 4000}},  # silent after its first token
            extra_headers=rid("silent-stream"),
        )
        chunks: list[Any] = []
        with pytest.raises(openai.APIError, match="engine"):
            await _read_into(silent, chunks)
        carried = sum(bool(c.delta.content) for chunk in chunks for c in chunk.choices)
    records = {r.request_id: r for r in await meter.wait_records("timeouts", 2)}
    plain = records["slow-plain"]
    assert (plain.outcome, plain.status, plain.total_tokens) == ("timeout", 504, 0)
    stream = records["silent-stream"]
    assert carried >= 1
    assert (stream.outcome, stream.status, stream.completion_tokens) == ("timeout", 200, carried), (
        stream
    )
    assert stream.prompt_tokens > 0


async def test_non_streaming_requests_left_are_billed_what_the_engine_generated(
    meter: Meter,
) -> None:
    # The engine is asked for a stream behind the client's back, so a hang-up in the middle of
    # a plain JSON request still leaves the tokens generated until then; a cut by the engine
    # is answered 502 with no part of the answer, and billed nothing (the SDK retries it).
    headers = await _bearer(meter, "plain-cut")
    url = f"{meter.gateway}/v1/chat/completions"
    slow = {"model": MODEL, "messages": HELLO, "max_tokens": 200, "sim": {"itl_ms": 20}}
    await _hang_up(meter, url, slow, {**headers, **rid("plain-left")}, 0.6)
    cut = {"model": MODEL, "messages": HELLO, "sim": {"cut_after": 3}}
    async with meter.http.post(url, json=cut, headers={**headers, **rid("plain-cut")}) as resp:
        assert resp.status == 502
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
        assert error["code"] == "engine_disconnected"

    records = {r.request_id: r for r in await meter.wait_records("plain-cut", 2)}
    left = records["plain-left"]
    assert (left.outcome, left.status, left.stream) == ("client_disconnected", 499, False)
    assert left.prompt_tokens > 0
    assert 5 <= left.completion_tokens < 200, left  # ~30 at 20 ms a token in 0.6 s
    broken = records["plain-cut"]
    assert (broken.outcome, broken.status, broken.stream) == ("engine_error", 502, False)
    assert (broken.prompt_tokens, broken.completion_tokens) == (0, 0)  # 3 generated


async def test_a_stream_its_last_engine_dropped_before_its_first_frame_is_a_502(
    meter: Meter,
) -> None:
    """Found 2026-12-06: a stream whose last engine answered 200 and broke before its first
    frame (killed while the request waited in its queue) was answered 200 with one error frame,
    recorded engine_error 200, and SDKs did not retry it; the same fault on a plain request, or
    before the headers, is a 502 they retry. Nothing reached the client: it is that 502."""
    key = await meter.new_key("never-began")
    async with meter.client(key) as oai:
        with pytest.raises(openai.APIStatusError) as broke:
            await oai.chat.completions.create(
                model=MODEL,
                messages=HELLO,
                stream=True,
                extra_body={"sim": {"drop": "after_headers"}},
                extra_headers=rid("never-began"),
            )
    assert broke.value.status_code == 502
    assert isinstance(broke.value.body, dict)
    assert broke.value.body["code"] == "engine_disconnected", broke.value.body
    [record] = await meter.wait_records("never-began", 1)
    assert (record.outcome, record.status, record.stream, record.total_tokens) == (
        "engine_error",
        502,
        True,
        0,
    )


async def test_a_request_left_before_its_first_token_is_billed_its_prompt(meter: Meter) -> None:
    # vLLM reports usage with the first token; the prompt was read before it. A client that
    # hung up in between paid nothing, so a long prompt's prefill was free.
    headers = await _bearer(meter, "left-early")
    url = f"{meter.gateway}/v1/chat/completions"
    long_prompt = [{"role": "user", "content": "tell me " * 200}]
    passed = {"use_beam_search": True}  # (what the engine's non-streaming path alone does)
    for request_id, stream, extra in (
        ("stream-left", True, {}),
        ("plain-left", False, {}),
        ("passed-left", False, passed),  # (sent as it is: no usage until the end)
    ):
        body = {"model": MODEL, "messages": long_prompt, "stream": stream, "sim": {"ttft_ms": 3000}}
        body |= extra
        await _hang_up(meter, url, body, {**headers, **rid(request_id)}, 0.5)
    records = {r.request_id: r for r in await meter.wait_records("left-early", 3)}
    for request_id in ("stream-left", "plain-left", "passed-left"):
        left = records[request_id]
        assert (left.outcome, left.status) == ("client_disconnected", 499)
        assert left.prompt_tokens == prompt_tokens({"messages": long_prompt}), left
        assert left.completion_tokens == 0


async def test_a_batch_left_before_a_long_prompt_was_reported_is_billed_its_estimate(
    meter: Meter,
) -> None:
    # vLLM reports each prompt of a batch with its first token: a short prompt streams while a
    # long one behind it is still being read. Left then, the long prompt was billed nothing.
    headers = await _bearer(meter, "batch-left")
    url = f"{meter.gateway}/v1/completions"
    prompts = ["Hi", "tell me " * 300]
    for request_id, stream in (("batch-stream-left", True), ("batch-plain-left", False)):
        body = {
            "model": MODEL,
            "prompt": prompts,
            "max_tokens": 50,
            "stream": stream,
            "sim": {"itl_ms": 40, "stagger": 40},  # the long prompt's first token after 1.6 s
        }
        await _hang_up(meter, url, body, {**headers, **rid(request_id)}, 0.6)
    short = text_prompts(prompts[:1], "prompt")[0].tokens  # what the engine reported of it
    records = {r.request_id: r for r in await meter.wait_records("batch-left", 2)}
    for request_id in ("batch-stream-left", "batch-plain-left"):
        left = records[request_id]
        assert (left.outcome, left.status) == ("client_disconnected", 499)
        assert left.prompt_tokens == short + prompt_estimates({"prompt": prompts})[1], left
        assert 5 <= left.completion_tokens < 50, left  # the short prompt's tokens so far


async def _bearer(meter: Meter, tenant: str) -> dict[str, str]:
    """A new key of `tenant`, in the header that carries it."""
    return {"authorization": f"Bearer {await meter.new_key(tenant)}"}


async def _hang_up(
    meter: Meter, url: str, body: dict[str, Any], headers: dict[str, str], after_s: float
) -> None:
    """Send `body` and hang up `after_s` seconds in, before the answer has all come."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_read(meter, url, body, headers), after_s)


async def _read(meter: Meter, url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    async with meter.http.post(url, json=body, headers=headers) as resp:
        return await resp.read()


async def test_a_records_latency_counts_from_the_requests_arrival_as_its_ttft_does(
    meter: Meter,
) -> None:
    """Found by review: a record's `latency_ms` was counted from when the request was handed
    to the engine, its `ttft_ms` from when it arrived, so the time spent before (the body
    read, the key check, an admission waiting) made a latency shorter than its own time to
    first token (50 of 100 records of a burst against a limited key). Here the body comes
    0.5 s after the head."""
    headers = await _bearer(meter, "latency")
    host, port = meter.gateway.removeprefix("http://").split(":")
    body = orjson.dumps({"model": MODEL, "messages": HELLO, "stream": True})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
        f"authorization: {headers['authorization']}\r\nx-request-id: slow-body\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(body)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    (record,) = await meter.wait_records("latency", 1)
    assert record.ttft_ms is not None
    assert record.latency_ms >= 500, record
    assert record.latency_ms >= record.ttft_ms, record


async def test_a_rate_limited_request_leaves_no_record(meter: Meter) -> None:
    key = await meter.new_key("limited", rpm=1)
    async with meter.client(key) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO)
        with pytest.raises(openai.RateLimitError):
            await oai.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(await meter.wait_records("limited", 1)) == 1


async def test_lost_replies_and_a_redis_restart_never_count_twice(meter: Meter) -> None:
    url = f"{meter.gateway}/admin/v1/tenants/retry"
    async with meter.http.put(url, json={}, headers=ADMIN) as resp:
        assert resp.status == 200  # a tenant record: cached like the key while Redis is away
    key = await meter.new_key("retry")
    async with meter.client(key) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO)  # caches the key
        await meter.wait_records("retry", 1)

        # Redis runs every settlement but the gateway never hears back: it retries, and the
        # retries find the record already written.
        meter.proxy.set_mode("swallow")
        await asyncio.sleep(1)  # the auth listener resubscribes (and empties its cache) first
        for _ in range(5):
            await oai.chat.completions.create(model=MODEL, messages=HELLO)
        await meter.wait_records("retry", 6)  # every script ran...
        assert await meter.pending() >= 1  # ...but the gateway does not know it
        retried = meter.proxy.swallowed + 2
        async with asyncio.timeout(10):
            while meter.proxy.swallowed < retried:  # noqa: ASYNC110 (two more full retries)
                await asyncio.sleep(0.05)
        assert len(await meter.records("retry")) == 6

        # Redis restarts (its data kept): settlements made meanwhile wait, then go in once.
        await meter.redis_server.stop()
        meter.proxy.set_mode("pass")
        for _ in range(3):
            await oai.chat.completions.create(model=MODEL, messages=HELLO)
        assert await meter.pending() >= 3
        await meter.redis_server.start()
        async with asyncio.timeout(20):
            while await meter.pending() > 0:  # noqa: ASYNC110 (polling the gauge)
                await asyncio.sleep(0.1)
    records = await meter.wait_records("retry", 9)
    assert len(records) == 9
    assert len({r.id for r in records}) == 9


async def _get(meter: Meter, path: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
    async with meter.http.get(f"{meter.gateway}{path}", headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def _engines_are_the_operators(meter: Meter, own: dict[str, str]) -> None:
    """A tenant's records (JSON lines, CSV) leave out the engine's address; the admin's keep it."""
    _, body, _ = await _get(meter, "/v1/usage/records", own)
    assert "engine" not in orjson.loads(body.splitlines()[0])
    status, body, _ = await _get(meter, "/v1/usage/records?format=csv", own)
    assert status == 200
    assert body.splitlines()[0].split(b",")[:3] == [b"id", b"request_id", b"time"]
    assert b"engine" not in body.splitlines()[0]
    _, body, _ = await _get(meter, "/admin/v1/usage/records?tenant=beta", ADMIN)
    assert orjson.loads(body.splitlines()[0])["engine"].startswith("http://")


async def test_usage_totals_records_and_each_tenant_sees_only_its_own(meter: Meter) -> None:
    alpha1, alpha2 = await meter.new_key("alpha"), await meter.new_key("alpha")
    beta = await meter.new_key("beta")
    for key, times in ((alpha1, 3), (alpha2, 2), (beta, 1)):
        async with meter.client(key) as oai:
            for _ in range(times):
                await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    alpha = await meter.wait_records("alpha", 5)
    await meter.wait_records("beta", 1)

    status, body, _ = await _get(meter, "/admin/v1/usage?tenant=alpha&group_by=key_id", ADMIN)
    assert status == 200
    rows = {row["key_id"]: row for row in orjson.loads(body)["data"]}
    assert {k: r["requests"] for k, r in rows.items()} == {
        alpha1.split("-")[2]: 3,
        alpha2.split("-")[2]: 2,
    }
    for row in rows.values():
        assert row["completion_tokens"] == 4 * row["requests"]
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert sum(r["prompt_tokens"] for r in rows.values()) == sum(r.prompt_tokens for r in alpha)

    status, body, _ = await _get(meter, "/admin/v1/usage?group_by=tenant,day", ADMIN)
    by_tenant = {row["tenant"]: row for row in orjson.loads(body)["data"]}
    assert by_tenant["alpha"]["requests"] == 5
    assert by_tenant["beta"]["requests"] == 1
    assert by_tenant["alpha"]["day"] == alpha[0].day

    # A tenant's key sees its tenant's usage, never another's, whatever it asks for.
    own = {"authorization": f"Bearer {beta}"}
    status, body, _ = await _get(meter, "/v1/usage?group_by=tenant", own)
    assert status == 200
    assert orjson.loads(body)["data"] == [
        {
            "tenant": "beta",
            "requests": 1,
            "prompt_tokens": alpha[0].prompt_tokens,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "total_tokens": alpha[0].prompt_tokens + 4,
            "fine_tune_jobs": 0,
            "trained_tokens": 0,
        }
    ]
    # Another tenant asked for by name is a 400 naming `tenant` (it was ignored: the caller's
    # own totals answered under a 200); its own name is served.
    for path in ("/v1/usage?tenant=alpha", "/v1/usage/records?tenant=alpha"):
        status, body, _ = await _get(meter, path, own)
        assert status == 400, body
        assert orjson.loads(body)["error"]["param"] == "tenant"
    status, body, _ = await _get(meter, "/v1/usage/records?tenant=beta", own)
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert [line["tenant"] for line in lines] == ["beta"]
    await _engines_are_the_operators(meter, own)
    status, _, _ = await _get(meter, "/v1/usage", {"authorization": "Bearer sk-nope"})
    assert status == 401

    # Raw records page by page: each exactly once, in ledger order.
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        path = f"/admin/v1/usage/records?tenant=alpha&limit=2{cursor}"
        status, body, headers = await _get(meter, path, ADMIN)
        assert status == 200
        seen += [orjson.loads(line)["id"] for line in body.splitlines()]
        if "x-next-cursor" not in headers:
            break
        cursor = f"&after={headers['x-next-cursor']}"
    assert seen == [r.id for r in alpha]

    status, body, headers = await _get(
        meter, "/admin/v1/usage/records?tenant=beta&format=csv", ADMIN
    )
    assert headers["content-type"].startswith("text/csv")
    rows_csv = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["tenant"], r["completion_tokens"], r["outcome"]) for r in rows_csv] == [
        ("beta", "4", "ok")
    ]


async def test_usage_queries_name_the_bad_parameter(meter: Meter) -> None:
    for query, param in (
        ("group_by=tenant,colour", "group_by"),
        ("start=yesterday", "start"),
        ("start=2026-02-01&end=2026-01-01", "start"),
        ("start=2020-01-01&end=2026-01-01", "start"),
        ("group_by=day&group_by=model", "group_by"),  # was grouped by model alone
    ):
        status, body, _ = await _get(meter, f"/admin/v1/usage?{query}", ADMIN)
        assert status == 400, query
        assert orjson.loads(body)["error"]["param"] == param, query
    for query, param in (
        ("after=nonsense", "after"),
        ("start=2026-02-01&end=2026-01-01", "start"),  # was 200 and an empty page
        ("group_by=model", "group_by"),  # was ignored: raw records for the totals asked
        ("start=20261206", "start"),  # a day without dashes was Unix seconds: 1970-08-23
    ):
        status, body, _ = await _get(meter, f"/admin/v1/usage/records?{query}", ADMIN)
        assert (status, orjson.loads(body)["error"]["param"]) == (400, param), query
    status, _, _ = await _get(meter, "/admin/v1/usage", {})
    assert status == 401


async def test_record_ranges_take_every_documented_time_form(meter: Meter) -> None:
    async with meter.client(await meter.new_key("ranges")) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    [record] = await meter.wait_records("ranges", 1)
    arrived = int(record.time_ms / 1000)  # ten digits: Unix seconds, one moment, not a day

    async def ids(query: str) -> list[str]:
        path = f"/admin/v1/usage/records?tenant=ranges&{query}"
        status, body, _ = await _get(meter, path, ADMIN)
        assert status == 200, (query, body)
        return [orjson.loads(line)["id"] for line in body.splitlines()]

    assert await ids(f"end={arrived - 1}") == []
    assert await ids(f"start={arrived - 1}") == [record.id]
    assert await ids(f"end={record.day}") == [record.id]  # a day runs to its end
    assert await ids("start=0001-01-01") == [record.id]  # before 1970: from the first record
    assert await ids("end=1969-12-31") == []
    assert await ids(f"start={record.day}t00:00:00z") == [record.id]  # RFC 3339's lower case
    # Up to, not at, `end`, as totals' end=…T00:00:00Z ends the day before: a month's records
    # and the next month's both held a record written in the millisecond between them.
    redis = Redis.from_url(meter.redis_server.url)
    try:
        raw = await redis.xrange(log_key("ranges"))
    finally:
        await redis.aclose()
    [(entry, _)] = cast("list[tuple[bytes, dict[bytes, bytes]]]", raw)
    written = datetime.fromtimestamp(int(entry.split(b"-")[0]) / 1000, UTC)
    at = written.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert await ids(f"end={at}") == []
    assert await ids(f"start={at}") == [record.id]
    assert await ids(f"start={at}&end={at}") == []  # (an empty range: no 400)
    after = (written + timedelta(milliseconds=1)).isoformat(timespec="milliseconds")
    assert await ids(f"end={after.replace('+00:00', 'Z')}") == [record.id]
    for route, param in (("usage", "start"), ("usage/records", "end")):
        path = f"/admin/v1/{route}?{param}={'9' * 20}"  # past the year 9999
        status, body, _ = await _get(meter, path, ADMIN)
        assert (status, orjson.loads(body)["error"]["param"]) == (400, param)


async def test_a_start_past_today_without_an_end_is_an_empty_range(meter: Meter) -> None:
    # East of UTC a client's date is already tomorrow in UTC's evening.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    status, body, _ = await _get(meter, f"/admin/v1/usage?start={tomorrow}", ADMIN)
    assert status == 200, body
    answer = orjson.loads(body)
    assert (answer["start"], answer["end"], answer["data"]) == (tomorrow, tomorrow, [])


async def test_empty_usage_filters_are_no_filters(meter: Meter) -> None:
    key = await meter.new_key("blank")
    async with meter.client(key) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    [record] = await meter.wait_records("blank", 1)
    blank = "tenant=&key_id=&model=&start=&end=&group_by="  # a form's empty fields
    status, body, _ = await _get(meter, f"/admin/v1/usage?{blank}", ADMIN)
    assert status == 200
    assert "blank" in [row["tenant"] for row in orjson.loads(body)["data"]]
    status, body, _ = await _get(meter, f"/admin/v1/usage/records?{blank}&limit=10000", ADMIN)
    assert record.id in [orjson.loads(line)["id"] for line in body.splitlines()]
    own = {"authorization": f"Bearer {key}"}
    status, body, _ = await _get(meter, "/v1/usage?key_id=&model=", own)
    assert [row["requests"] for row in orjson.loads(body)["data"]] == [1]
    status, body, _ = await _get(meter, "/v1/usage/records?key_id=&model=", own)
    assert [orjson.loads(line)["id"] for line in body.splitlines()] == [record.id]


async def test_usage_totals_take_days_and_day_starts_not_moments_within_a_day(
    meter: Meter,
) -> None:
    """Totals are per UTC day: a moment within a day was widened to the whole day, and an end
    at a day's start counted that day too (a month as [Nov 1, Dec 1) billed all of Dec 1)."""
    key = await meter.new_key("days")
    async with meter.client(key) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    [record] = await meter.wait_records("days", 1)
    own = {"authorization": f"Bearer {key}"}
    day = date.fromisoformat(record.day)

    async def requests(query: str) -> list[int]:
        status, body, _ = await _get(meter, f"/v1/usage?{query}", own)
        assert status == 200, body
        return [row["requests"] for row in orjson.loads(body)["data"]]

    assert await requests(f"end={record.day}") == [1]  # a date: the whole day
    assert await requests(f"end={day + timedelta(1)}T00:00:00Z") == [1]
    assert await requests(f"end={record.day}T00:00:00Z") == []  # ends the day before
    assert await requests(f"start={record.day}T00:00:00Z&end={record.day}") == [1]
    for query in (f"start={record.day}T09:30:00Z", f"end={record.day}T23:59:59Z"):
        status, body, _ = await _get(meter, f"/v1/usage?{query}", own)
        error = orjson.loads(body)["error"]
        assert (status, error["param"]) == (400, query.split("=")[0]), query
        assert "per UTC day" in error["message"]


async def test_a_usage_query_without_redis_is_a_retryable_503_that_names_the_ledger(
    meter: Meter,
) -> None:
    meter.proxy.set_mode("refuse")  # every connection to Redis is cut, and new ones refused
    try:
        for path in ("/admin/v1/usage?group_by=tenant", "/admin/v1/usage/records?limit=5"):
            status, body, headers = await _get(meter, path, ADMIN)
            assert status == 503, body
            assert headers["retry-after"] == "1"
            error = orjson.loads(body)["error"]
            assert (error["type"], error["code"]) == (
                "service_unavailable",
                "usage_ledger_unavailable",
            )
    finally:
        meter.proxy.set_mode("pass")
    status, body, _ = await _get(meter, "/admin/v1/usage/records?limit=5", ADMIN)
    assert status == 200, body  # and answered again once Redis is back
