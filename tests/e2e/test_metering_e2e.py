"""Metering against a real vLLM engine: the ledger agrees with vLLM's own token counters, and
the usage the gateway asks vLLM for behind the client's back never shows in the client's stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.metering.record import UsageRecord
from gateway.proxy.normalize import normalize_success
from tests.e2e.conftest import CHAT, E2E, WEATHER_TOOL
from tests.e2e.metering import (
    MAX_ABANDON_GAP,
    STORY,
    TENANT,
    LedgerView,
    Tokens,
    new_rid,
    settled_vllm_tokens,
    stall_this_process,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

DONE = "[DONE]"
FRANCE: Any = [{"role": "user", "content": "What is the capital of France?"}]


def _rid_header(rid: str) -> dict[str, str]:
    return {"x-request-id": rid}


# --- a client's stream is vLLM's, whatever the gateway asked vLLM for ---


async def _frames(
    http: aiohttp.ClientSession, url: str, body: Any, *, direct: bool, **kw: Any
) -> list[Any]:
    """Every `data:` payload of a stream, parsed, without the per-request `id` and `created`.
    The engine's own frames get the gateway's documented normalisation (forbidden nulls
    dropped); the gateway's are taken as they are."""
    async with http.post(url, json=body, **kw) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()
    frames: list[Any] = []
    for line in raw.split(b"\n"):
        if not line.startswith(b"data: "):
            assert line.strip() == b"", line
            continue
        payload = line.removeprefix(b"data: ")
        if payload == b"[DONE]":
            frames.append(DONE)
            continue
        frame = orjson.loads(normalize_success(payload) if direct else payload)
        frame.pop("id", None)
        frame.pop("created", None)
        frames.append(frame)
    return frames


async def _direct_and_gateway(e2e: E2E, route: str, body: Any) -> tuple[list[Any], list[Any]]:
    direct = await _frames(e2e.http, f"{e2e.engines.chat}/v1/{route}", body, direct=True)
    gateway = await _frames(
        e2e.http, f"{e2e.gateway}/v1/{route}", body, direct=False, headers=e2e.auth
    )
    return direct, gateway


def _with_usage(frames: list[Any]) -> list[int]:
    return [i for i, f in enumerate(frames) if isinstance(f, dict) and "usage" in f]


CHAT_STREAM: Any = {
    "model": CHAT,
    "messages": FRANCE,
    "temperature": 0,
    "max_tokens": 20,
    "stream": True,
}


async def test_chat_stream_without_usage_is_vllms_stream(e2e: E2E) -> None:
    # Twice: the first may be the gateway's first stream from this engine (finish frame held
    # until the usage frame tells its system_fingerprint), the second uses the cached one.
    for _ in range(2):
        direct, gateway = await _direct_and_gateway(e2e, "chat/completions", CHAT_STREAM)
        assert len(gateway) == len(direct)
        assert _with_usage(gateway) == []
        assert gateway == direct
        assert gateway[-1] == DONE
        finish = gateway[-2]
        assert finish["choices"][0]["finish_reason"] in ("stop", "length")
        assert "system_fingerprint" in direct[-2]
        assert finish["system_fingerprint"] == direct[-2]["system_fingerprint"]


async def test_chat_stream_with_include_usage_is_vllms_stream(e2e: E2E) -> None:
    body = {**CHAT_STREAM, "stream_options": {"include_usage": True}}
    direct, gateway = await _direct_and_gateway(e2e, "chat/completions", body)
    assert len(gateway) == len(direct)
    last = len(gateway) - 2  # the usage-only frame, just before [DONE]
    assert _with_usage(gateway) == [last]
    assert gateway[last]["choices"] == []
    assert gateway[last]["usage"]["completion_tokens"] > 0
    assert gateway == direct


def _without_call_ids(frames: list[Any]) -> list[Any]:
    """Frames without their tool calls' ids (vLLM draws a new one per request)."""
    for frame in frames:
        for choice in frame.get("choices", ()) if isinstance(frame, dict) else ():
            for call in (choice.get("delta") or {}).get("tool_calls") or ():
                call.pop("id", None)
    return frames


async def test_a_tool_call_stream_is_vllms_stream(e2e: E2E) -> None:
    # The gateway asks vLLM for token ids on requests with tools (a chunk for every token its
    # tool parser holds back: usage all along), and shows the client what vLLM sends without.
    body = {
        **CHAT_STREAM,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "max_tokens": 60,
    }
    direct, gateway = await _direct_and_gateway(e2e, "chat/completions", body)
    assert _without_call_ids(gateway) == _without_call_ids(direct)
    deltas = [c["delta"] for f in gateway[:-1] for c in f["choices"]]
    assert any(d.get("tool_calls") for d in deltas), gateway
    assert all(d for d in deltas[1:-1]), deltas  # no chunk sent only for the ids


async def test_completions_stream_without_usage_is_vllms_stream(e2e: E2E) -> None:
    body = {
        "model": CHAT,
        "prompt": "The capital of France is",
        "temperature": 0,
        "max_tokens": 20,
        "stream": True,
    }
    direct, gateway = await _direct_and_gateway(e2e, "completions", body)
    assert len(gateway) == len(direct)
    assert _with_usage(gateway) == []
    assert gateway == direct
    assert gateway[-1] == DONE


# --- what a request looked like to its client: (request id, route, stream, usage it saw) ---


@dataclass(frozen=True, slots=True)
class Sent:
    rid: str
    route: str
    stream: bool
    seen: Tokens | None = None  # the usage the client was shown, if it asked for it


async def _chat(oai: openai.AsyncOpenAI, label: str, max_tokens: int) -> Sent:
    rid = new_rid(label)
    reply = await oai.chat.completions.create(
        model=CHAT,
        messages=FRANCE,
        temperature=0,
        max_tokens=max_tokens,
        extra_headers=_rid_header(rid),
    )
    assert reply.usage is not None
    seen = Tokens(reply.usage.prompt_tokens, reply.usage.completion_tokens)
    return Sent(rid, "chat/completions", False, seen)


async def _chat_stream(
    oai: openai.AsyncOpenAI, label: str, max_tokens: int, options: Any = None
) -> Sent:
    rid = new_rid(label)
    extra: dict[str, Any] = {} if options is None else {"stream_options": options}
    stream = await oai.chat.completions.create(
        model=CHAT,
        messages=FRANCE,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        extra_headers=_rid_header(rid),
        **extra,
    )
    chunks = [chunk async for chunk in stream]
    usages = [c.usage for c in chunks if c.usage is not None]
    seen = None
    if options is None:
        assert usages == []
    else:
        last = usages[-1]
        seen = Tokens(last.prompt_tokens, last.completion_tokens)
    return Sent(rid, "chat/completions", True, seen)


async def _completion(oai: openai.AsyncOpenAI, label: str) -> Sent:
    rid = new_rid(label)
    reply = await oai.completions.create(
        model=CHAT,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
        extra_headers=_rid_header(rid),
    )
    assert reply.usage is not None
    seen = Tokens(reply.usage.prompt_tokens, reply.usage.completion_tokens)
    return Sent(rid, "completions", False, seen)


async def _completion_stream(oai: openai.AsyncOpenAI, label: str) -> Sent:
    rid = new_rid(label)
    stream = await oai.completions.create(
        model=CHAT,
        prompt="Once upon a time",
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_headers=_rid_header(rid),
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    return Sent(rid, "completions", True)


def _byrid(records: list[UsageRecord]) -> dict[str, UsageRecord]:
    by_rid = {r.request_id: r for r in records}
    assert len(by_rid) == len(records), "two records carry the same request id"
    return by_rid


def _ledger_tokens(records: list[UsageRecord]) -> Tokens:
    return Tokens(sum(r.prompt_tokens for r in records), sum(r.completion_tokens for r in records))


async def test_ledger_of_completed_requests_equals_vllm_counters(
    e2e: E2E, oai: openai.AsyncOpenAI, ledger: LedgerView
) -> None:
    vllm_before = await settled_vllm_tokens(e2e)
    count_before = await ledger.count()

    calls: list[Awaitable[Sent]] = [
        _chat(oai, "chat-a", 2),
        _chat(oai, "chat-b", 16),
        _chat(oai, "chat-c", 64),
        _chat_stream(oai, "stream-a", 5),
        _chat_stream(oai, "stream-b", 24),
        _chat_stream(oai, "stream-usage", 9, {"include_usage": True}),
        _chat_stream(oai, "stream-all", 7, {"include_usage": True, "continuous_usage_stats": True}),
        _completion(oai, "completion"),
        _completion_stream(oai, "completion-stream"),
    ]
    sent = list(await asyncio.gather(*calls))

    records = await ledger.new_since(count_before, len(sent))
    vllm_delta = await settled_vllm_tokens(e2e) - vllm_before

    assert len(records) == len(sent)
    by_rid = _byrid(records)
    assert set(by_rid) == {s.rid for s in sent}
    for s in sent:
        record = by_rid[s.rid]
        assert (record.outcome, record.status) == ("ok", 200), record
        assert (record.tenant, record.model) == (TENANT, CHAT)
        assert (record.route, record.stream) == (s.route, s.stream)
        assert record.prompt_tokens > 0
        assert record.completion_tokens > 0
        if s.seen is not None:
            assert Tokens(record.prompt_tokens, record.completion_tokens) == s.seen
    ledger_total = _ledger_tokens(records)
    print(f"\ncompleted requests: ledger {ledger_total}, vLLM counters {vllm_delta}")
    assert ledger_total == vllm_delta


async def test_a_prompt_read_again_from_the_prefix_cache_is_metered_as_cached(
    e2e: E2E, oai: openai.AsyncOpenAI, ledger: LedgerView
) -> None:
    # vLLM reports cached prompt tokens only when started with --enable-prompt-tokens-details:
    # without it every record said cached_tokens 0 while its prefix cache served the prompt.
    count_before = await ledger.count()
    long: Any = [{"role": "user", "content": "Remember this list: " + "apple pear plum " * 40}]
    sent: list[tuple[str, int]] = []
    for label in ("cache-first", "cache-again"):
        rid = new_rid(label)
        reply = await oai.chat.completions.create(
            model=CHAT, messages=long, max_tokens=2, temperature=0, extra_headers=_rid_header(rid)
        )
        assert reply.usage is not None
        assert reply.usage.prompt_tokens_details is not None
        cached = reply.usage.prompt_tokens_details.cached_tokens
        assert cached is not None
        sent.append((rid, cached))
    by_rid = _byrid(await ledger.new_since(count_before, 2))
    (_, first), (again, cached) = sent
    assert cached > 100, sent  # (the prompt is ~170 tokens; blocks of 16 are cached)
    assert by_rid[again].cached_tokens == cached
    assert by_rid[sent[0][0]].cached_tokens == first


# --- abandoned streams: the client reads a few chunks and hangs up ---


async def _abandon_openai_chat(
    e2e: E2E, oai: openai.AsyncOpenAI, rid: str, stall_s: float = 0.0
) -> None:
    stream = await oai.chat.completions.create(
        model=CHAT,
        messages=STORY,
        temperature=0,
        max_tokens=200,
        stream=True,
        extra_headers=_rid_header(rid),
        extra_body={"ignore_eos": True},
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 4:
            break
    await stream.close()
    if stall_s:
        stall_this_process(stall_s)


async def _abandon_openai_chat_stalled(e2e: E2E, oai: openai.AsyncOpenAI, rid: str) -> None:
    """The gateway stalls for 2 s as the client hangs up (~40 tokens of vLLM's)."""
    await _abandon_openai_chat(e2e, oai, rid, stall_s=2.0)


async def _abandon_raw(e2e: E2E, route: str, body: dict[str, Any], rid: str) -> None:
    headers = {**e2e.auth, **_rid_header(rid)}
    resp = await e2e.http.post(f"{e2e.gateway}/v1/{route}", json=body, headers=headers)
    try:
        assert resp.status == 200
        frames = 0
        while frames < 5:
            line = await resp.content.readline()
            assert line, "the stream ended before the client hung up"
            frames += line.startswith(b"data: ")
    finally:
        resp.close()  # drops the connection: the gateway sees the client leave


async def _abandon_raw_chat(e2e: E2E, oai: openai.AsyncOpenAI, rid: str) -> None:
    body = {
        "model": CHAT,
        "messages": STORY,
        "temperature": 0,
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await _abandon_raw(e2e, "chat/completions", body, rid)


async def _abandon_raw_completion(e2e: E2E, oai: openai.AsyncOpenAI, rid: str) -> None:
    body = {
        "model": CHAT,
        "prompt": "Once upon a time, in a land far away,",
        "temperature": 0,
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }
    await _abandon_raw(e2e, "completions", body, rid)


async def _abandon_raw_tool_call(e2e: E2E, oai: openai.AsyncOpenAI, rid: str) -> None:
    """Cut while vLLM's tool parser holds the call's first tokens back: it sends no chunk
    then (so no usage) unless asked for token ids, which the gateway does (tool_ids.py)."""
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 200,
        "stream": True,
    }
    await _abandon_after_role(e2e, body, rid)


async def _abandon_after_role(e2e: E2E, body: dict[str, Any], rid: str) -> None:
    """A chat stream read to its role chunk (which comes at once), then cut 0.5 s later,
    while vLLM holds every token back."""
    headers = {**e2e.auth, **_rid_header(rid)}
    resp = await e2e.http.post(f"{e2e.gateway}/v1/chat/completions", json=body, headers=headers)
    try:
        assert resp.status == 200
        role = await resp.content.readline()
        assert role.startswith(b"data: "), role
        assert b'token_ids":[' not in role  # (asked by the gateway, not shown)
        await asyncio.sleep(0.5)
    finally:
        resp.close()


# A token of this model's vocabulary that is the first byte of an emoji: biased toward it, the
# model writes only such bytes, and the text never ends in a whole character.
LEAD_BYTE_TOKEN = "10813"


async def _abandon_raw_partial_characters(e2e: E2E, oai: openai.AsyncOpenAI, rid: str) -> None:
    """Cut while every token is part of a character: vLLM sends no chunk for a token that adds
    no text (so no usage) unless asked for token ids, which the gateway now does for every
    chat request (tool_ids.py; found by review 2026-12-07: billed 0 of 19-46 tokens)."""
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "logit_bias": {LEAD_BYTE_TOKEN: 100},
        "temperature": 0,
        "max_tokens": 200,
        "stream": True,
    }
    await _abandon_after_role(e2e, body, rid)


Abandon = Callable[[E2E, openai.AsyncOpenAI, str], Awaitable[None]]
ABANDONS: list[tuple[str, str, Abandon]] = [
    ("openai-chat-close", "chat/completions", _abandon_openai_chat),
    ("openai-chat-close-stalled", "chat/completions", _abandon_openai_chat_stalled),  # (3 of 35)
    ("raw-chat-include-usage", "chat/completions", _abandon_raw_chat),
    ("raw-completions", "completions", _abandon_raw_completion),
    ("raw-tool-call", "chat/completions", _abandon_raw_tool_call),  # (billed 0 before)
    ("raw-partial-characters", "chat/completions", _abandon_raw_partial_characters),  # (0 too)
]


async def test_abandoned_streams_are_billed_close_to_what_vllm_generated(
    e2e: E2E, oai: openai.AsyncOpenAI, ledger: LedgerView
) -> None:
    gaps: dict[str, int] = {}
    for label, route, abandon in ABANDONS:
        vllm_before = await settled_vllm_tokens(e2e)
        count_before = await ledger.count()
        rid = new_rid(label)
        await abandon(e2e, oai, rid)
        await e2e.wait_running(0)
        records = await ledger.new_since(count_before, 1)
        vllm_delta = await settled_vllm_tokens(e2e) - vllm_before

        assert [r.request_id for r in records] == [rid]
        record = records[0]
        assert (record.outcome, record.status) == ("client_disconnected", 499), record
        assert (record.route, record.stream) == (route, True)
        assert record.completion_tokens > 0
        assert record.completion_tokens < 200  # really cut short
        assert record.prompt_tokens == vllm_delta.prompt
        gaps[label] = vllm_delta.generation - record.completion_tokens
        print(
            f"\n{label}: ledger {record.completion_tokens} completion tokens, "
            f"vLLM generated {vllm_delta.generation} (gap {gaps[label]})"
        )
    assert all(abs(gap) <= MAX_ABANDON_GAP for gap in gaps.values()), gaps
    assert abs(sum(gaps.values())) <= MAX_ABANDON_GAP * len(gaps)
