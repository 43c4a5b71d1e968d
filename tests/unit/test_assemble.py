"""Stream chunks of vLLM's shape assembled into its non-streaming bodies, and the request
rewrite that asks the engine for the stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.proxy.assemble import ChatAssembler, CompletionAssembler
from gateway.proxy.collect import stream_request

HEAD: Any = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chat_chunk(index: int, delta: Any, **choice: Any) -> Any:
    return {**HEAD, "choices": [{"index": index, "delta": delta, **choice}]}


def usage_chunk(prompt: int, completion: int, **extra: Any) -> Any:
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
    return {**HEAD, "choices": [], "usage": {**usage, "completion_tokens": completion}, **extra}


def test_chat_choices_are_joined_in_index_order_with_vllms_null_fields() -> None:
    chunks = [
        chat_chunk(1, {"role": "assistant", "content": ""}, logprobs=None, finish_reason=None),
        chat_chunk(0, {"role": "assistant", "content": ""}, logprobs=None, finish_reason=None),
        chat_chunk(0, {"content": "Par"}),
        chat_chunk(1, {"content": "Lyon"}, finish_reason="length", stop_reason=None),
        chat_chunk(0, {"content": "is"}, finish_reason="stop", stop_reason="."),
        usage_chunk(10, 3, system_fingerprint="fp"),
    ]
    assembler = ChatAssembler({"n": 2})
    for chunk in chunks:
        assembler.feed(chunk)
    body = assembler.body()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    first, second = body["choices"]
    assert first["message"] == {
        "role": "assistant",
        "content": "Paris",
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    assert (first["finish_reason"], first["stop_reason"]) == ("stop", ".")
    assert (second["message"]["content"], second["finish_reason"]) == ("Lyon", "length")
    assert first["logprobs"] is None
    assert first["token_ids"] is None
    assert (body["id"], body["created"], body["model"]) == ("chatcmpl-1", 7, "m")
    assert body["object"] == "chat.completion"
    assert body["system_fingerprint"] == "fp"
    assert body["usage"] == {
        "prompt_tokens": 10,
        "total_tokens": 13,
        "completion_tokens": 3,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    for name in ("service_tier", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"):
        assert body[name] is None


def test_chat_logprobs_token_ids_and_tool_calls_are_merged() -> None:
    entry = {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}
    call = {"id": "call-1", "type": "function", "index": 0}
    chunks = [
        {**chat_chunk(0, {"role": "assistant", "content": ""}), "prompt_token_ids": [5, 6]},
        chat_chunk(
            0,
            {"tool_calls": [{**call, "function": {"name": "weather", "arguments": ""}}]},
            logprobs={"content": [entry]},
            token_ids=[1],
        ),
        chat_chunk(
            0,
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            logprobs={"content": [entry, entry]},
            token_ids=[2, 3],
        ),
        chat_chunk(
            0,
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
            logprobs={"content": []},
            token_ids=[],
            finish_reason="stop",
        ),
        usage_chunk(2, 3),
    ]
    assembler = ChatAssembler({"logprobs": True, "return_token_ids": True})
    for chunk in chunks:
        assembler.feed(chunk)
    body = assembler.body()
    choice = body["choices"][0]
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert choice["message"]["content"] == ""
    assert choice["logprobs"] == {"content": [entry, entry, entry]}
    assert choice["token_ids"] == [1, 2, 3]
    assert body["prompt_token_ids"] == [5, 6]


@pytest.mark.parametrize(
    ("tool_choice", "streamed", "answered"),
    [
        # vLLM parses "required" calls and writes their arguments again (json.dumps)
        ("required", '{\n    "city" : "pär is"\n}', '{"city": "pär is"}'),
        ("required", '{"n":1.50,"deep":{"a" :[1 ,2]}}', '{"n": 1.5, "deep": {"a": [1, 2]}}'),
        ("required", '{"city": "Pa', '{"city": "Pa'),  # cut by max_tokens: as streamed
        # a named function's and auto's arguments are the model's text both ways
        ({"type": "function", "function": {"name": "weather"}}, '{ "city" :1}', '{ "city" :1}'),
        ("auto", '{ "city" :1}', '{ "city" :1}'),
    ],
)
def test_tool_call_arguments_are_as_vllms_non_streaming_answer_has_them(
    tool_choice: Any, streamed: str, answered: str
) -> None:
    """Found 2026-12-07: with `tool_choice` "required" the gateway's body had the stream's
    `{\n    "city" : "paris"\n}` where vLLM's own non-streaming body has
    `{"city": "paris"}`."""
    call = {"id": "call-1", "type": "function", "index": 0}
    assembler = ChatAssembler({"tools": [{"type": "function"}], "tool_choice": tool_choice})
    for chunk in (
        chat_chunk(0, {"role": "assistant", "content": ""}),
        chat_chunk(0, {"tool_calls": [{**call, "function": {"name": "weather"}}]}),
        chat_chunk(0, {"tool_calls": [{"index": 0, "function": {"arguments": streamed}}]}),
        chat_chunk(0, {}, finish_reason="tool_calls"),
    ):
        assembler.feed(chunk)
    (called,) = assembler.body()["choices"][0]["message"]["tool_calls"]
    assert called["function"] == {"name": "weather", "arguments": answered}


def test_completion_choices_join_text_and_logprob_lists() -> None:
    def chunk(index: int, text: str, **extra: Any) -> Any:
        return {
            **HEAD,
            "object": "text_completion",
            "choices": [{"index": index, "text": text, **extra}],
        }

    def logprobs(offset: int, token: str) -> Any:
        return {
            "text_offset": [offset],
            "token_logprobs": [-1.0],
            "tokens": [token],
            "top_logprobs": [{token: -1.0}],
        }

    assembler = CompletionAssembler({"logprobs": 1, "n": 1, "prompt": ["a", "b"]})
    for c in (
        chunk(1, "x", logprobs=logprobs(0, "x")),
        chunk(0, "He", logprobs=logprobs(0, "He")),
        chunk(0, "llo", logprobs=logprobs(2, "llo"), finish_reason="length"),
        chunk(1, "y", logprobs=logprobs(1, "y"), finish_reason="stop", stop_reason="z"),
        usage_chunk(4, 4),
    ):
        assembler.feed(c)
    body = assembler.body()
    assert body["object"] == "text_completion"
    first, second = body["choices"]
    assert (first["text"], first["finish_reason"], first["stop_reason"]) == (
        "Hello",
        "length",
        None,
    )
    assert first["logprobs"] == {
        "text_offset": [0, 2],
        "token_logprobs": [-1.0, -1.0],
        "tokens": ["He", "llo"],
        "top_logprobs": [{"He": -1.0}, {"llo": -1.0}],
    }
    assert (second["text"], second["stop_reason"]) == ("xy", "z")
    assert first["prompt_logprobs"] is None
    assert first["token_ids"] is None
    assert body["usage"]["total_tokens"] == 8


@pytest.mark.parametrize(
    ("request_fields", "content"),
    [
        ({"tools": [{"type": "function"}]}, None),  # tool_choice "auto" by default
        ({"tools": [{"type": "function"}], "tool_choice": "auto"}, None),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, ""),
        ({"tools": [{"type": "function"}], "tool_choice": {"type": "function"}}, ""),
    ],
)
def test_a_reply_of_only_tool_calls_has_the_content_vllm_gives_it(
    request_fields: dict[str, Any], content: str | None
) -> None:
    """vLLM's stream begins every choice with content "": a reply the tool parser turned into
    calls alone has content null when the model chose to call ("auto"), as vLLM's own
    non-streaming answer (and OpenAI's) has it, and "" when the request made it call."""
    call = {"id": "call-1", "type": "function", "index": 0}
    chunks = [
        chat_chunk(0, {"role": "assistant", "content": ""}),
        chat_chunk(0, {"tool_calls": [{**call, "function": {"name": "f", "arguments": "{}"}}]}),
        chat_chunk(0, {}, finish_reason="tool_calls"),
        usage_chunk(2, 3),
    ]
    assembler = ChatAssembler(request_fields)
    for chunk in chunks:
        assembler.feed(chunk)
    assert assembler.body()["choices"][0]["message"]["content"] == content


def test_a_stream_body_is_spliced_when_the_client_sent_no_stream_member() -> None:
    raw = b'{"model": "m",  "messages": [{"role": "user", "content": "hi"}], "top_k": 3}'
    body = orjson.loads(raw)
    sent = stream_request("chat/completions", raw, body)
    assert sent is not None
    assert sent.endswith(raw[1:])  # the client's bytes follow, untouched
    parsed = orjson.loads(sent)
    assert parsed["stream"] is True
    assert parsed["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert {k: v for k, v in parsed.items() if k not in ("stream", "stream_options")} == body


@pytest.mark.parametrize("given", [None, {}])
def test_stream_options_vllm_takes_without_a_stream_are_replaced(given: Any) -> None:
    """vLLM takes a null or empty `stream_options` on a non-streaming request (it refuses only
    one that asks something): asked as a stream, with the usage an abandoned one is billed by,
    and no second `stream_options` member for vLLM's parser to pick the client's from."""
    raw = orjson.dumps({"model": "m", "messages": [], "stream_options": given})
    sent = stream_request("chat/completions", raw, orjson.loads(raw))
    assert sent is not None
    assert sent.count(b'"stream_options"') == 1
    parsed = orjson.loads(sent)
    assert parsed["stream"] is True
    assert parsed["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_stream_false_is_rewritten() -> None:
    body = {"model": "m", "prompt": "x", "stream": False}
    sent = stream_request("completions", orjson.dumps(body), body)
    assert sent is not None
    assert orjson.loads(sent)["stream"] is True


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("embeddings", {"input": "x"}),
        ("chat/completions", {"messages": [], "prompt_logprobs": 1}),
        ("completions", {"prompt": "x", "use_beam_search": True}),
        ("completions", {"prompt": "x", "echo": True, "logprobs": 0}),
        ("chat/completions", {"messages": [], "echo": True}),
        ("chat/completions", {"messages": [], "stream_options": {"include_usage": True}}),
        ("completions", {"prompt": "x", "kv_transfer_params": {"do_remote_decode": True}}),
    ],
)
def test_what_only_vllms_non_streaming_path_answers_passes_through(
    route: str, body: dict[str, Any]
) -> None:
    assert stream_request(route, orjson.dumps(body), body) is None
