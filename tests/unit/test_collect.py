"""Reading a collected stream's frames: the one-replace fast path gives what reading frame by
frame gives, for vLLM's frames and for every shape it steps aside for."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.collect import chunks_of
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, data_array, frame_data, split_frames

PROPERTY = settings(max_examples=300, database=None)


def _frame_by_frame(blocks: list[bytes]) -> tuple[list[Any], bytes | None]:
    """The reference reading: each frame's data line, comments and [DONE] skipped, up to the
    first error payload."""
    chunks: list[Any] = []
    for block in blocks:
        for frame in split_frames(block):
            data = frame_data(frame)
            if not data or data == b"[DONE]":
                continue
            if data.startswith(b'{"error"'):
                return chunks, data
            chunks.append(orjson.loads(data))
    return chunks, None


def _read(stream: bytes, cuts: list[int]) -> tuple[list[Any], bytes | None]:
    splitter, chunks = FrameSplitter(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        block = splitter.feed_block(stream[start:end])
        if not block:
            continue
        loaded, error = chunks_of(block)
        chunks += loaded
        if error is not None:
            return chunks, error
    return chunks, None


def _blocks(stream: bytes, cuts: list[int]) -> list[bytes]:
    splitter = FrameSplitter()
    pieces = [stream[s:e] for s, e in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return [splitter.feed_block(piece) for piece in pieces]


def _chunk(i: int) -> bytes:
    body = {"id": "c", "choices": [{"index": 0, "delta": {"content": f"t{i}\n"}}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_vllm_frames_are_one_array() -> None:
    block = b"".join(_chunk(i) for i in range(3)) + DONE_FRAME
    array = data_array(block)
    assert array is not None
    assert orjson.loads(array) == _frame_by_frame([block])[0]
    assert data_array(DONE_FRAME) == b"[]"


def test_frames_of_another_shape_are_read_one_by_one() -> None:
    for other in (
        b": keep-alive\n\n",  # a comment
        b"event: x\ndata: {}\n\n",  # an event line
        b"\n\n",  # a blank line too many
        b'data:{"a":1}\n\n',  # no space after the colon
        b'data: {"a":1}\ndata: {"b":2}\n\n',  # two data lines (the first one counts)
    ):
        block = _chunk(0) + other + _chunk(1)
        assert data_array(block) is None, other
        assert chunks_of(block) == _frame_by_frame([block])


def test_an_error_frame_ends_the_chunks_before_it() -> None:
    error = b'{"error":{"message":"boom","code":500}}'
    block = _chunk(0) + b"data: " + error + b"\n\n" + _chunk(1)
    assert chunks_of(block) == ([orjson.loads(_chunk(0)[6:])], error)


def test_a_chunk_that_holds_an_error_object_deeper_in_is_a_chunk() -> None:
    inner = {"id": "c", "choices": [], "meta": {"error": {"message": "not the engine's"}}}
    block = _chunk(0) + b"data: " + orjson.dumps(inner) + b"\n\n" + _chunk(1)
    assert chunks_of(block) == (
        [orjson.loads(_chunk(0)[6:]), inner, orjson.loads(_chunk(1)[6:])],
        None,
    )


def test_a_payload_that_is_not_json_falls_back_to_frame_by_frame() -> None:
    block = _chunk(0) + b"data: \n\n" + DONE_FRAME[:-2] + b"\n\n" + _chunk(1)
    assert data_array(block) is not None  # the array does not load
    assert chunks_of(block) == _frame_by_frame([block])


FRAME = st.one_of(
    st.integers(0, 99).map(_chunk),
    st.just(b": ping\n\n"),
    st.just(b"\n\n"),
    st.just(DONE_FRAME),
    st.just(b'data: {"error":{"message":"x","code":400}}\n\n'),
    st.just(b'event: e\ndata: {"k":1}\n\n'),
)


@PROPERTY
@given(frames=st.lists(FRAME, min_size=1, max_size=8), data=st.data())
def test_any_stream_cut_anywhere_reads_as_frame_by_frame(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=6)))
    assert _read(stream, cuts) == _frame_by_frame(_blocks(stream, cuts))
