"""gateway/metering/stream_options.py and the proxy's FrameFilter: the engine always streams
usage; the client sees only what it asked for, with vLLM's system_fingerprint where it expects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.metering.stream_options import (
    UsageWanted,
    fingerprint_of,
    for_client,
    force_usage,
    is_finish,
    wanted,
    with_fingerprint,
)
from gateway.metering.usage import Usage, find_usage, is_final_usage
from gateway.proxy.frame_filter import FrameFilter
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, frame_data

FORCED = {"include_usage": True, "continuous_usage_stats": True}
FP = "vllm-0.32.0-abcd1234"
HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'


def token(content: str, completion: int, *, finish: str | None = None) -> bytes:
    """A vLLM chat chunk as it streams with continuous usage stats."""
    reason = b"null" if finish is None else orjson.dumps(finish)
    return (
        HEAD
        + b'"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(content)
        + b'},"logprobs":null,"finish_reason":'
        + reason
        + b"}],"
        + b'"usage":{"prompt_tokens":5,"total_tokens":%d,"completion_tokens":%d}}'
        % (5 + completion, completion)
    )


ROLE = (
    HEAD + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}],"usage":{"prompt_tokens":5,"total_tokens":5,"completion_tokens":0}}'
)
FINISH = token("!", 4, finish="stop")
FINAL = (
    HEAD + b'"choices":[],"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4,'
    b'"prompt_tokens_details":{"cached_tokens":2}},"system_fingerprint":"' + FP.encode() + b'"}'
)
STREAM = [ROLE, token("Hi", 1), token(" the", 2), token("re", 3), FINISH, FINAL]


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def parsed(frames: bytes) -> list[Any]:
    """The JSON payloads of a client's byte stream ([DONE] as the string)."""
    out: list[Any] = []
    for f in FrameSplitter().feed(frames):
        data = frame_data(f)
        assert data is not None
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


# --- force_usage ---------------------------------------------------------------------------


def test_force_usage_splices_and_keeps_the_rest_byte_for_byte() -> None:
    raw = b'{"model": "m",  "stream": true, "messages": [{"role": "user", "content": "{x}"}]}'
    out = force_usage(raw, orjson.loads(raw))
    splice = b'"stream_options":{"include_usage":true,"continuous_usage_stats":true},'
    assert out == b"{" + splice + raw[1:]
    body = orjson.loads(out)
    assert body["stream_options"] == FORCED
    assert {k: v for k, v in body.items() if k != "stream_options"} == orjson.loads(raw)


def test_force_usage_with_leading_whitespace() -> None:
    raw = b' \r\n\t{"model":"m","stream":true,"prompt":"a"}\n'
    out = force_usage(raw, orjson.loads(raw))
    assert out.startswith(b' \r\n\t{"stream_options":{')
    assert out.endswith(b'"model":"m","stream":true,"prompt":"a"}\n')
    assert orjson.loads(out) == {"stream_options": FORCED, **orjson.loads(raw)}


def test_force_usage_reserialises_a_clients_stream_options() -> None:
    raw = (
        b'{"model":"m","stream":true,"stream_options":{"include_usage":false,'
        b'"continuous_usage_stats":false,"extra":1},"n":2}'
    )
    out = orjson.loads(force_usage(raw, orjson.loads(raw)))
    assert out == {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True, "extra": 1},
        "n": 2,
    }


def test_force_usage_replaces_null_stream_options() -> None:
    raw = b'{"model":"m","stream":true,"stream_options":null}'
    out = force_usage(raw, orjson.loads(raw))
    assert orjson.loads(out) == {"model": "m", "stream": True, "stream_options": FORCED}


@pytest.mark.parametrize("options", ['"yes"', "[true]", "1", "true"])
def test_force_usage_leaves_invalid_stream_options_to_the_engine(options: str) -> None:
    raw = b'{"model":"m","stream":true,"stream_options":' + options.encode() + b"}"
    assert force_usage(raw, orjson.loads(raw)) is raw


# --- wanted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, UsageWanted(False, False)),
        ({"stream_options": None}, UsageWanted(False, False)),
        ({"stream_options": "x"}, UsageWanted(False, False)),
        ({"stream_options": {}}, UsageWanted(False, False)),
        ({"stream_options": {"include_usage": True}}, UsageWanted(True, False)),
        ({"stream_options": {"include_usage": "true"}}, UsageWanted(False, False)),
        ({"stream_options": {"continuous_usage_stats": True}}, UsageWanted(False, False)),
        ({"stream_options": FORCED}, UsageWanted(True, True)),
    ],
)
def test_wanted(body: dict[str, Any], expected: UsageWanted) -> None:
    assert wanted(body) == expected
    assert expected.everything == (expected.include_usage and expected.continuous)


# --- for_client ----------------------------------------------------------------------------

TOKEN = token("Hi", 1)
TOKEN_CUT = (
    HEAD + b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}'
)
NO_USAGE = HEAD + b'"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'


@pytest.mark.parametrize(
    ("include", "continuous", "token_out", "final_out"),
    [
        (False, False, TOKEN_CUT, None),
        (True, False, TOKEN_CUT, FINAL),
        (False, True, TOKEN, None),
        (True, True, TOKEN, FINAL),
    ],
)
def test_for_client(
    include: bool, continuous: bool, token_out: bytes, final_out: bytes | None
) -> None:
    want = UsageWanted(include, continuous)
    assert for_client(TOKEN, want) == token_out
    assert for_client(FINAL, want) == final_out
    assert for_client(NO_USAGE, want) is NO_USAGE
    # the same when the caller passes the usage span it already found
    assert for_client(TOKEN, want, find_usage(TOKEN)) == token_out
    assert for_client(FINAL, want, find_usage(FINAL)) == final_out


def test_for_client_cuts_usage_wherever_it_sits() -> None:
    none = UsageWanted(False, False)
    usage = b'"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}'
    assert for_client(b'{"usage":{"prompt_tokens":1},"id":"a"}', none) == b'{"id":"a"}'
    assert for_client(b'{"id": "a", ' + usage + b', "x": 1}', none) == b'{"id": "a", "x": 1}'
    assert for_client(b'{"id": "a" , ' + usage + b" }", none) == b'{"id": "a" }'
    assert for_client(b"{" + usage + b"}", none) == b"{}"
    for out in (for_client(TOKEN, none), for_client(FINISH, none)):
        assert out is not None
        assert "usage" not in orjson.loads(out)


def test_final_and_finish_detection() -> None:
    assert is_final_usage(FINAL)
    assert is_final_usage(b'{"choices": [], "usage": {"prompt_tokens": 1}}')
    assert not is_final_usage(TOKEN)
    assert not is_final_usage(b'{"choices":[],"id":"x"}')
    assert is_finish(FINISH)
    assert is_finish(b'{"choices":[{"finish_reason" : "length"}]}')
    assert not is_finish(TOKEN)
    assert not is_finish(token('"finish_reason":"stop"', 2))


# --- fingerprints --------------------------------------------------------------------------


def test_fingerprint_of() -> None:
    assert fingerprint_of(FINAL) == FP.encode()
    assert fingerprint_of(b'{"system_fingerprint" : "fp_1"}') == b"fp_1"
    assert fingerprint_of(b'{"system_fingerprint":"a\\"b"}') == b'a\\"b'
    assert fingerprint_of(TOKEN) is None
    assert fingerprint_of(b'{"system_fingerprint":null}') is None


def test_with_fingerprint() -> None:
    payload = b'{"id":"x","choices":[]}'
    out = with_fingerprint(payload, b"fp_1")
    assert out == b'{"id":"x","choices":[],"system_fingerprint":"fp_1"}'
    assert orjson.loads(out)["system_fingerprint"] == "fp_1"
    assert orjson.loads(with_fingerprint(b'{"a":1}', b'a\\"b'))["system_fingerprint"] == 'a"b'
    has = b'{"id":"x","system_fingerprint":"old"}'
    assert with_fingerprint(has, b"new") is has
    assert with_fingerprint(b"[DONE]", b"fp") == b"[DONE]"


# --- FrameFilter ---------------------------------------------------------------------------


def run(filt: FrameFilter, payloads: list[bytes]) -> tuple[list[bytes], bytes]:
    """Feed payloads then [DONE] as frames; each frame's output, and the whole output."""
    outs = [filt(frame(p)) for p in payloads]
    outs.append(filt(DONE_FRAME))
    outs.append(filt.release())  # what relay_stream sends after the loop
    return outs, b"".join(outs)


def test_client_without_usage_first_request_holds_the_finish_frame_for_the_fingerprint() -> None:
    known: dict[str, str] = {}
    filt = FrameFilter(UsageWanted(False, False), 1, "http://e", known)
    outs, everything = run(filt, STREAM)
    assert b"usage" not in everything
    assert outs[4] == b""  # the finish frame waits for the fingerprint
    assert (
        outs[5]
        == frame(  # released by the usage frame, which itself is dropped
            HEAD + b'"choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,'
            b'"finish_reason":"stop"}],"system_fingerprint":"' + FP.encode() + b'"}'
        )
    )
    assert outs[6] == DONE_FRAME
    assert outs[7] == b""
    assert outs[1] == frame(
        HEAD + b'"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,'
        b'"finish_reason":null}]}'
    )
    chunks = parsed(everything)
    assert chunks[-1] == "[DONE]"
    assert len(chunks) == 6  # role, 3 tokens, finish, [DONE]: no usage-only chunk
    assert all(c["choices"] for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1]) == "Hi there!"
    assert [c.get("system_fingerprint") for c in chunks[:-1]] == [None] * 4 + [FP]
    assert known == {"http://e": FP}
    assert filt.tap.usage == Usage(prompt_tokens=5, completion_tokens=4, cached_tokens=2)


def test_client_without_usage_second_request_gets_the_known_fingerprint_at_once() -> None:
    known: dict[str, str] = {}
    run(FrameFilter(UsageWanted(False, False), 1, "http://e", known), STREAM)
    filt = FrameFilter(UsageWanted(False, False), 1, "http://e", known)
    outs, everything = run(filt, STREAM)
    assert b"usage" not in everything
    finish = parsed(outs[4])
    assert len(finish) == 1
    assert finish[0]["system_fingerprint"] == FP
    assert finish[0]["choices"][0]["finish_reason"] == "stop"
    assert outs[5] == b""  # the usage frame is dropped and had nothing left to release
    assert outs[6] == DONE_FRAME
    assert filt.tap.usage == Usage(5, 4, 2)


def test_held_finish_frame_is_released_when_the_stream_ends_without_usage_frame() -> None:
    filt = FrameFilter(UsageWanted(False, False), 1, "http://e", {})
    assert filt(frame(FINISH)) == b""
    out = filt.release()
    (only,) = parsed(out)
    assert only["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in only
    assert filt.tap.usage == Usage(5, 4, 0)  # a cut stream: the last running report


def test_client_with_include_usage_only_gets_the_final_chunk_like_vllm() -> None:
    filt = FrameFilter(UsageWanted(True, False), 1, "http://e", {})
    outs, everything = run(filt, STREAM)
    chunks = parsed(everything)
    assert [("usage" in c) for c in chunks[:-1]] == [False] * 5 + [True]
    assert chunks[-2]["usage"]["completion_tokens"] == 4
    assert chunks[-2]["system_fingerprint"] == FP
    assert outs[5] == frame(FINAL)
    assert filt.tap.usage == Usage(5, 4, 2)


def test_client_with_every_usage_gets_the_engines_frames_unchanged() -> None:
    for want in (UsageWanted(True, True), None):
        filt = FrameFilter(want, 1, "http://e", {})
        outs, _ = run(filt, STREAM)
        assert outs[:-1] == [frame(p) for p in STREAM] + [DONE_FRAME]
        assert filt.tap.usage == Usage(5, 4, 2)


def test_client_without_usage_n2_first_request_every_finish_frame_gets_the_fingerprint() -> None:
    """With n=2 vLLM interleaves the choices: choice 0 may finish while choice 1 still streams.
    Without forced usage vLLM puts system_fingerprint on every finish chunk; the filter promises
    to hold a finish frame "until that frame says it" when the engine's fingerprint is unknown."""

    def choice(index: int, content: str, completion: int, finish: str | None = None) -> bytes:
        return token(content, completion, finish=finish).replace(
            b'"index":0', b'"index":%d' % index
        )

    stream = [
        choice(0, "", 0),
        choice(1, "", 0),
        choice(0, "A", 1),
        choice(1, "B", 1),
        choice(0, "", 2, finish="stop"),
        choice(1, "C", 2),
        choice(1, "", 3, finish="length"),
        FINAL,
    ]
    filt = FrameFilter(UsageWanted(False, False), 2, "http://e", {})
    _, everything = run(filt, stream)
    assert b"usage" not in everything
    chunks = parsed(everything)
    assert chunks[-1] == "[DONE]"
    finishes = [c for c in chunks[:-1] if c["choices"][0]["finish_reason"] is not None]
    assert sorted(c["choices"][0]["index"] for c in finishes) == [0, 1]
    assert [c.get("system_fingerprint") for c in finishes] == [FP, FP]
