"""Property-based tests (hypothesis): the SSE framing, the body checks and the token estimates
hold for inputs nobody thought to write down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.body import require_prompts
from gateway.api.engine_fields import FieldBounds, check_engine_fields
from gateway.errors import ApiError
from gateway.limits.estimate import prompt_tokens, reserved_tokens
from gateway.proxy.sse import FrameSplitter

# No example database: tests write nothing outside their temporary directories.
PROPERTY = settings(max_examples=300, database=None)
# A line of a frame: no line breaks (SSE would split it), not blank (blank lines end frames).
LINE = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), min_size=1
).filter(str.strip)
FRAME = st.lists(LINE, min_size=1, max_size=3).map(lambda lines: "\n".join(lines).encode())
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@PROPERTY
@given(frames=st.lists(FRAME, min_size=1, max_size=6), crlf=st.booleans(), data=st.data())
def test_frames_come_out_whole_however_the_stream_is_cut(
    frames: list[bytes], crlf: bool, data: st.DataObject
) -> None:
    stream = b"".join(f + b"\n\n" for f in frames)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    splitter, out = FrameSplitter(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += splitter.feed(stream[start:end])
    assert out == [f + b"\n\n" for f in frames]
    assert splitter.pending == b""


def _refusal(check: Callable[[], None]) -> ApiError | None:
    """The ApiError a check raised, or None; any other exception fails the test."""
    try:
        check()
    except ApiError as refused:
        return refused
    return None


@PROPERTY
@given(value=JSON, max_prompts=st.integers(1, 8))
def test_prompt_checks_answer_any_json_with_a_400_or_nothing(value: Any, max_prompts: int) -> None:
    refused = _refusal(lambda: require_prompts({"prompt": value}, "prompt", max_prompts))
    if refused is not None:
        assert refused.status == 400
        assert refused.param is not None
        assert refused.param.startswith("prompt")


@PROPERTY
@given(body=st.dictionaries(st.text(max_size=30), JSON, max_size=6))
def test_engine_field_checks_answer_any_body_with_a_400_or_nothing(body: dict[str, Any]) -> None:
    bounds = FieldBounds(max_schema_bytes=200, max_logit_bias=3, max_stop=2)
    refused = _refusal(lambda: check_engine_fields(body, bounds))
    if refused is not None:
        assert refused.status == 400
        assert refused.param


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)}
)


@PROPERTY
@given(
    messages=st.lists(MESSAGE, min_size=1, max_size=6),
    max_tokens=st.none() | st.integers(1, 4096),
    n=st.none() | st.integers(1, 8),
    default=st.integers(1, 2048),
    context=st.none() | st.integers(2, 8192),
)
def test_a_reservation_covers_the_prompt_and_every_completion(
    messages: list[dict[str, str]],
    max_tokens: int | None,
    n: int | None,
    default: int,
    context: int | None,
) -> None:
    body: dict[str, Any] = {"messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if n is not None:
        body["n"] = n
    prompt = prompt_tokens(body, context)  # no more than the context, if it is known
    reserved = reserved_tokens(body, default, context)
    chars = sum(len(m["content"]) for m in messages)
    assert prompt >= 1
    assert prompt >= min(chars // 4, context or chars)  # never under the estimate's own rate
    if max_tokens is not None:  # no more than the context leaves, if it is known
        room = max_tokens if context is None else min(max_tokens, max(1, context - prompt))
        assert reserved == prompt + room * (n or 1)
    else:
        assert prompt + (n or 1) <= reserved <= prompt + default * (n or 1)
