"""FrameFilter's token-frame path (gateway/proxy/frame_filter.py): for every frame, what the client
gets and the usage noted are exactly what the general path gives, whichever frames take it."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metering.stream_options import UsageWanted
from gateway.proxy.frame_filter import FrameFilter
from gateway.proxy.sse import DONE_FRAME

PROPERTY = settings(max_examples=400, database=None)
HEAD = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'


def token(index: int, content: str, completion: int, finish: bytes = b"null") -> bytes:
    usage = b'{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}' % (
        completion,
        5 + completion,
    )
    return (
        b"data: "
        + HEAD
        + b'"choices":[{"index":%d,"delta":{"content":' % index
        + orjson.dumps(content)
        + b'},"logprobs":null,"finish_reason":'
        + finish
        + b'}],"usage":'
        + usage
        + b"}\n\n"
    )


FINAL = (
    b"data: " + HEAD + b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,'
    b'"total_tokens":14},"system_fingerprint":"fp-1"}\n\n'
)
FRAMES = st.one_of(
    st.builds(token, st.integers(0, 2), st.text(max_size=8), st.integers(0, 50)),
    st.builds(
        token, st.integers(0, 2), st.text(max_size=8), st.integers(0, 50), st.just(b'"stop"')
    ),
    st.just(FINAL),
    st.just(DONE_FRAME),
    st.just(b": ping\n\n"),
    # shapes the token path must leave to the general one
    st.just(
        b'data: {"choices":[{"index":0,"delta":{"role":null}}],"usage":{"prompt_tokens":1}}\n\n'
    ),
    st.just(
        b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens_details":{"cached_tokens":1}}}\n\n'
    ),
    st.just(b'data: {"a":{"choices":[{"index":1}],"usage":{"completion_tokens":3}}}\n\n'),
    st.just(b'data: {"choices":[{"index":0}], "usage": {"completion_tokens":2}} \n\n'),
    st.just(b'data: {"choices":[{"index":0}],"usage":{"a":{"b":1}}\n\n'),
    st.just(b'data:{"choices":[{"index":0}],"usage":{"completion_tokens":1}}\n\n'),
    st.just(b'data: {"usage":{"completion_tokens":1}}\n\n'),
    st.just(b'data: {"choices":[{"index":0}], "usage":{"completion_tokens":2}}\n\n'),
    st.just(b'data: {"choices":[{"index":0}],"usage":{"completion_tokens":3} \n\n'),
    st.just(b'data: {"x":1}\ndata: {"choices":[{"index":0}],"usage":{"completion_tokens":1}}\n\n'),
    st.just(
        b'data: {"error":{"message":"x","code":500},"choices":[{"index":0}],'
        b'"usage":{"prompt_tokens":1}}\n\n'
    ),
)
WANTS = st.sampled_from([UsageWanted(False, False), UsageWanted(True, False)])


def _run(frames: list[bytes], want: UsageWanted, token_path: bool) -> tuple[bytes, object]:
    known = {"http://e": "fp-0"}
    shown = FrameFilter(want, 3, "http://e", known)
    shown.cut_usage = token_path and shown.cut_usage
    out = b"".join(shown(frame) for frame in frames) + shown.release()
    return out, shown.usage


@PROPERTY
@given(frames=st.lists(FRAMES, max_size=10), want=WANTS)
def test_token_frames_read_as_the_general_path_reads_them(
    frames: list[bytes], want: UsageWanted
) -> None:
    assert _run(frames, want, True) == _run(frames, want, False)


def test_a_token_frame_loses_its_usage_and_notes_it() -> None:
    shown = FrameFilter(UsageWanted(False, False), 1, "http://e", {})
    assert shown(token(0, "hi", 3)) == b"data: " + HEAD + (
        b'"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}'
        b"\n\n"
    )
    usage = shown.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
