"""gateway/metering/usage.py: usage found by regex in response bodies and in stream frames."""

from __future__ import annotations

import orjson

from gateway.metering.usage import (
    StreamUsage,
    Usage,
    find_usage,
    is_final_usage,
    parse_usage,
    usage_of,
)


def chunk(index: int, prompt: int, completion: int, *, content: str = "x") -> bytes:
    """A vLLM chat chunk with continuous usage: one choice and that choice's running usage."""
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":%d,"delta":{"content":%s},"logprobs":null,"finish_reason":null}],'
        b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}'
        % (index, orjson.dumps(content), prompt, prompt + completion, completion)
    )


def text_chunk(index: int, prompt: int, completion: int) -> bytes:
    """A vLLM /v1/completions chunk with continuous usage."""
    return (
        b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
        b'"choices":[{"index":%d,"text":"x","logprobs":null,"finish_reason":null,'
        b'"stop_reason":null}],'
        b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}'
        % (index, prompt, prompt + completion, completion)
    )


FINAL = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4,'
    b'"prompt_tokens_details":{"cached_tokens":2}},"system_fingerprint":"vllm-0.32.0-abcd1234"}'
)


def test_chat_body_with_cached_tokens() -> None:
    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},'
        b'"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
        b'"usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7,'
        b'"prompt_tokens_details":{"cached_tokens":8}},"prompt_logprobs":null}'
    )
    usage = usage_of(body)
    assert usage == Usage(prompt_tokens=12, completion_tokens=7, cached_tokens=8)
    assert usage is not None
    assert usage.total_tokens == 19


def test_completions_body_without_cached_tokens() -> None:
    body = (
        b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"text":" world","logprobs":null,"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":3,"total_tokens":19,"completion_tokens":16,'
        b'"prompt_tokens_details":null}}'
    )
    assert usage_of(body) == Usage(3, 16, 0)


def test_embeddings_body_has_no_completion_tokens() -> None:
    body = (
        b'{"id":"embd-1","object":"list","created":1,"model":"e",'
        b'"data":[{"index":0,"object":"embedding","embedding":[0.1,-0.2]}],'
        b'"usage":{"prompt_tokens":4,"total_tokens":4,"completion_tokens":0}}'
    )
    assert usage_of(body) == Usage(4, 0, 0)


def test_spaces_after_colons_as_json_dumps_writes_them() -> None:
    body = (
        b'{"choices": [{"index": 0, "text": "a"}], "usage": {"prompt_tokens": 10, '
        b'"completion_tokens": 20, "total_tokens": 30, '
        b'"prompt_tokens_details": {"cached_tokens": 6}}}'
    )
    assert usage_of(body) == Usage(10, 20, 6)
    pretty = b'{\n  "usage" : {\n    "prompt_tokens" : 1,\n    "completion_tokens" : 2\n  }\n}'
    assert usage_of(pretty) == Usage(1, 2, 0)


def test_absent_and_null_usage() -> None:
    assert usage_of(b'{"id":"x","choices":[]}') is None
    assert usage_of(b'{"id":"x","choices":[],"usage":null}') is None
    assert usage_of(b"") is None


def test_the_word_usage_inside_a_string_is_not_the_usage_key() -> None:
    # A model that writes JSON about usage: its quotes are escaped in the body.
    content = '"usage":{"prompt_tokens":999,"completion_tokens":999}'
    fake = orjson.dumps({"choices": [{"index": 0, "message": {"content": content}}]})
    assert b'usage\\":{' in fake
    assert usage_of(fake) is None
    real = orjson.dumps(
        {
            "choices": [{"index": 0, "message": {"content": content, "name": "usage"}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3},
        }
    )
    assert usage_of(real) == Usage(2, 3, 0)
    # nor is a key that merely ends in "usage"
    other = b'{"kv_usage":{"prompt_tokens":99},"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    assert usage_of(other) == Usage(1, 1, 0)


def test_parse_usage_counts_missing_fields_as_zero() -> None:
    assert parse_usage(b"{}") == Usage(0, 0, 0)
    # completion_tokens_details must not be read as completion_tokens
    assert parse_usage(b'{"completion_tokens_details":{"reasoning_tokens":7}}') == Usage()


def test_find_usage_spans_the_member_and_the_object() -> None:
    compact = chunk(0, 5, 1)
    span = find_usage(compact)
    assert span is not None
    start, obj, end = span
    assert compact[start:end] == (
        b'"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}'
    )
    assert compact[obj:end].startswith(b"{")
    assert end == len(compact) - 1
    nested = find_usage(FINAL)
    assert nested is not None
    assert orjson.loads(FINAL[nested[1] : nested[2]]) == orjson.loads(FINAL)["usage"]
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    two = orjson.dumps({"id": "x", "choices": [], "usage": usage, "system_fingerprint": "f"})
    both = find_usage(two)
    assert both is not None
    assert orjson.loads(two[both[1] : both[2]]) == usage
    assert usage_of(two) == Usage(5, 4, 2)
    spaced = b'{"id": "x", "usage" : {"prompt_tokens": 1, "x": {"y": 2}}, "z": 1}'
    found = find_usage(spaced)
    assert found is not None
    assert spaced[found[0] : found[2]] == b'"usage" : {"prompt_tokens": 1, "x": {"y": 2}}'
    assert spaced[found[1] : found[2]] == b'{"prompt_tokens": 1, "x": {"y": 2}}'
    assert find_usage(b'{"usage":null}') is None
    assert find_usage(orjson.dumps({"choices": [{"delta": {"content": '"usage":{'}}]})) is None


def test_final_usage_frame_detection() -> None:
    assert is_final_usage(FINAL)
    assert is_final_usage(b'{"choices" : [ ], "usage": {"prompt_tokens": 1}}')
    assert not is_final_usage(chunk(0, 5, 1))
    assert not is_final_usage(b'{"choices":[],"id":"x"}')


def test_stream_final_usage_chunk_wins() -> None:
    tap = StreamUsage(n=1)
    for completion in range(1, 4):
        tap.feed(chunk(0, 5, completion))
    assert tap.usage == Usage(5, 3, 0)
    tap.feed(FINAL)
    assert tap.usage == Usage(5, 4, 2)
    tap.feed(b"[DONE]")
    assert tap.usage == Usage(5, 4, 2)


def test_feed_tells_the_final_frame_and_reads_any_index_compact_or_spaced() -> None:
    tap = StreamUsage(n=1)
    assert tap.feed(chunk(12, 5, 1)) is False
    spaced = (
        b'{"choices": [{"index": 3, "delta": {}}], '
        b'"usage": {"prompt_tokens": 2, "completion_tokens": 4}}'
    )
    assert tap.feed(spaced) is False
    assert tap.usage == Usage(prompt_tokens=5 + 2, completion_tokens=1 + 4)
    assert tap.feed(b'{"choices" : [ ], "usage": {"prompt_tokens": 1, "completion_tokens": 9}}')
    assert tap.usage == Usage(1, 9, 0)
    assert tap.feed(b"[DONE]") is False


def test_stream_without_any_usage_is_none() -> None:
    tap = StreamUsage()
    tap.feed(b'{"id":"x","choices":[{"index":0,"delta":{"content":"usage"}}]}')
    tap.feed(b"[DONE]")
    assert tap.usage is None


def test_cut_stream_n1_bills_the_last_report() -> None:
    tap = StreamUsage(n=1)
    tap.feed(chunk(0, 7, 0, content=""))  # the role chunk
    tap.feed(chunk(0, 7, 1))
    tap.feed(chunk(0, 7, 2, content='"usage":{"prompt_tokens":100}'))
    assert tap.usage == Usage(7, 2, 0)


def test_cut_chat_stream_n2_counts_the_prompt_once() -> None:
    tap = StreamUsage(n=2)
    tap.feed(chunk(0, 5, 1))
    tap.feed(chunk(1, 5, 1))
    tap.feed(chunk(0, 5, 2))
    tap.feed(chunk(1, 5, 2))
    tap.feed(chunk(1, 5, 3))
    assert tap.usage == Usage(prompt_tokens=5, completion_tokens=2 + 3, cached_tokens=0)


def test_cut_completions_stream_two_prompts_n2_groups_choices_by_prompt() -> None:
    # vLLM numbers the choices of prompt i as i * n + j.
    tap = StreamUsage(n=2)
    tap.feed(text_chunk(0, 4, 1))
    tap.feed(text_chunk(1, 4, 2))
    tap.feed(text_chunk(2, 9, 3))
    tap.feed(text_chunk(3, 9, 4))
    tap.feed(text_chunk(0, 4, 5))
    assert tap.usage == Usage(prompt_tokens=4 + 9, completion_tokens=5 + 2 + 3 + 4)
    assert tap.usage.prompts == (0, 1)  # the prompts in it (accounting estimates the rest)


def test_a_cut_stream_names_the_prompts_its_reports_cover() -> None:
    tap = StreamUsage(n=2)
    tap.feed(text_chunk(3, 9, 1))  # prompt 1's second choice: prompt 0 not reported yet
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.prompts) == (9, (1,))
    tap.feed(b'{"choices":[],"usage":{"prompt_tokens":13,"completion_tokens":9}}')
    assert tap.usage.prompts is None  # the final report: every prompt


def test_cut_completions_stream_two_prompts_n1_sums_prompts() -> None:
    tap = StreamUsage(n=1)
    tap.feed(text_chunk(0, 4, 1))
    tap.feed(text_chunk(1, 9, 2))
    assert tap.usage == Usage(prompt_tokens=13, completion_tokens=3)


def test_loaded_chunks_are_read_as_their_bytes_are() -> None:
    # The collected path loads every chunk anyway and feeds the loaded objects.
    frames = [text_chunk(0, 4, 1), text_chunk(1, 4, 2), text_chunk(2, 9, 3), text_chunk(0, 4, 5)]
    frames += [b'{"id":"x","choices":[{"index":3,"text":"x"}]}']  # no usage: nothing noted
    by_bytes, by_json = StreamUsage(n=2), StreamUsage(n=2)
    for frame in frames:
        by_bytes.feed(frame)
        by_json.feed_chunk(orjson.loads(frame))
    assert by_json.usage == by_bytes.usage == Usage(prompt_tokens=13, completion_tokens=10)
    by_bytes.feed(FINAL)
    by_json.feed_chunk(orjson.loads(FINAL))
    assert by_json.usage == by_bytes.usage == Usage(5, 4, 2)


def test_a_loaded_responses_usage_reads_input_and_output_tokens() -> None:
    tap = StreamUsage()
    usage = {"input_tokens": 6, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 2}}
    tap.feed_chunk({"choices": [], "usage": usage})
    assert tap.usage == Usage(6, 3, 2)


def test_n_below_one_is_treated_as_one() -> None:
    tap = StreamUsage(n=0)
    tap.feed(text_chunk(0, 4, 1))
    tap.feed(text_chunk(1, 9, 2))
    assert tap.usage == Usage(prompt_tokens=13, completion_tokens=3)


# --- the Responses API: input / output tokens, in a body and in the completed event ---

RESPONSES_USAGE = (
    b'"usage":{"input_tokens":31,"input_tokens_details":{"cached_tokens":16,'
    b'"cache_write_tokens":0,"input_tokens_per_turn":[31],"cached_tokens_per_turn":[16]},'
    b'"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0,"tool_output_tokens":0,'
    b'"output_tokens_per_turn":[9],"tool_output_tokens_per_turn":[0]},"total_tokens":40}'
)


def test_a_responses_body_reports_input_output_and_cached_tokens() -> None:
    body = (
        b'{"id":"resp_1","created_at":1,"model":"m","object":"response","output":[{"id":"msg_1",'
        b'"content":[{"text":"\\"usage\\":{\\"input_tokens\\":999}","type":"output_text"}]}],'
        b'"status":"completed",' + RESPONSES_USAGE + b',"user":null}'
    )
    assert usage_of(body) == Usage(prompt_tokens=31, completion_tokens=9, cached_tokens=16)


def test_the_completed_event_reports_the_usage_of_its_response() -> None:
    event = (
        b'{"response":{"id":"resp_1","object":"response","status":"completed",'
        + RESPONSES_USAGE
        + b',"user":null},"sequence_number":12,"type":"response.completed"}'
    )
    assert usage_of(event) == Usage(31, 9, 16)


def test_a_created_event_without_usage_reports_none() -> None:
    event = (
        b'{"response":{"id":"resp_1","usage":null},"sequence_number":0,"type":"response.created"}'
    )
    assert usage_of(event) is None
