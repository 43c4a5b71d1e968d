"""Token ids the gateway asks vLLM for on tool calls, cut out of what the client sees
(gateway/proxy/tool_ids.py), with the usage of the chunks sent only for them kept."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.metering.stream_options import UsageWanted
from gateway.metering.usage import StreamUsage
from gateway.proxy.frame_filter import FrameFilter
from gateway.proxy.tool_ids import asks_token_ids, with_token_ids, without_token_ids

TOOLS: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
HEAD = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":['


def frame(choice: bytes, usage: tuple[int, int], extra: bytes = b"") -> bytes:
    prompt, completion = usage
    counts = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt,
        prompt + completion,
        completion,
    )
    return HEAD + choice + b"]" + extra + b',"usage":' + counts + b"}\n\n"


ROLE = b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
HELD = b'{"index":0,"delta":{},"logprobs":null,"finish_reason":null,"token_ids":[%d]}'
CALL = (
    b'{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"token_ids\\":[1]"}}'
    b']},"logprobs":null,"finish_reason":null,"token_ids":[7]}'
)


def test_every_chat_request_asks_unless_its_client_did() -> None:
    chat = "chat/completions"
    assert asks_token_ids(chat, {"tools": TOOLS})
    assert asks_token_ids(chat, {"tools": TOOLS, "tool_choice": "none"})
    assert asks_token_ids(chat, {})  # (text held back: part of a character, a stop string)
    assert asks_token_ids(chat, {"return_token_ids": False})
    assert not asks_token_ids(chat, {"tools": TOOLS, "return_token_ids": True})
    assert not asks_token_ids("completions", {"tools": TOOLS})  # ("text":"" chunks there)


def test_the_ask_is_spliced_in_unless_the_field_is_there() -> None:
    sent = b' {"model": "m",  "n": 12345678901234567890123, "tools": []}'
    raw, body = with_token_ids(sent, orjson.loads(b'{"model": "m", "tools": []}'))
    assert (
        raw
        == b' {"return_token_ids":true,"model": "m",  "n": 12345678901234567890123, "tools": []}'
    )
    assert body == {"model": "m", "tools": [], "return_token_ids": True}
    raw, body = with_token_ids(b'{"return_token_ids": false}', {"return_token_ids": False})
    assert orjson.loads(raw) == body == {"return_token_ids": True}


def test_the_ids_become_the_nulls_vllm_writes_and_a_chunk_sent_for_them_alone_is_tapped() -> None:
    tap = StreamUsage(1)
    role = without_token_ids(frame(ROLE, (9, 0), b',"prompt_token_ids":[1,2,3]'), tap)
    assert role == frame(ROLE, (9, 0), b',"prompt_token_ids":null')  # vLLM's, when not asked
    assert without_token_ids(frame(HELD % 5, (9, 1)), tap) is None
    assert without_token_ids(frame(HELD % 6, (9, 2)), tap) is None
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (9, 2)  # billed so far
    call = without_token_ids(frame(CALL, (9, 3)), tap)
    assert call is not None
    assert call.count(b'"token_ids":null') == 1  # the choice's; the arguments' text untouched
    assert b'{\\"token_ids\\":[1]' in call
    plain = frame(ROLE, (9, 0))
    assert without_token_ids(plain, tap) is plain


def test_a_stream_shows_what_vllm_would_have_sent_and_bills_every_token() -> None:
    asked = FrameFilter(UsageWanted(False, False), 1, "http://e", {}, token_ids_asked=True)
    plain = FrameFilter(UsageWanted(False, False), 1, "http://e", {})
    sent = [
        frame(ROLE, (9, 0), b',"prompt_token_ids":[1,2,3]'),
        frame(HELD % 5, (9, 1)),
        frame(HELD % 6, (9, 2)),
        frame(CALL, (9, 3)),
    ]
    vllms = [frame(ROLE, (9, 0), b',"prompt_token_ids":null'), frame(CALL, (9, 3))]
    shown = b"".join(asked(f) for f in sent)
    assert shown == b"".join(
        plain(f.replace(b'"token_ids":[7]', b'"token_ids":null')) for f in vllms
    )
    cut = FrameFilter(UsageWanted(False, False), 1, "http://e", {}, token_ids_asked=True)
    for f in sent[:3]:  # cut before the call showed anything
        cut(f)
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 2  # (without the ids: 0, no chunk came)
