from __future__ import annotations

import orjson

from gateway.errors import BadGateway
from gateway.proxy.sse import (
    DONE_FRAME,
    FrameSplitter,
    error_frame,
    frame_data,
    frame_event,
    is_done,
    with_data,
)


def test_frames_split_across_chunks_are_reassembled_byte_for_byte() -> None:
    splitter = FrameSplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b": 1}\n") == []
    assert splitter.feed(b'\ndata: {"b": 2}\n\ndata: [DO') == [
        b'data: {"a": 1}\n\n',
        b'data: {"b": 2}\n\n',
    ]
    assert splitter.feed(b"NE]\n\n") == [DONE_FRAME]
    assert splitter.pending == b""


def test_crlf_frames_are_normalised() -> None:
    assert FrameSplitter().feed(b"data: x\r\n\r\n") == [b"data: x\n\n"]


def test_comments_and_non_data_fields_are_not_data() -> None:
    assert frame_data(b": keep-alive\n\n") is None
    assert frame_data(b"data: [DONE]\n\n") == b"[DONE]"
    assert is_done(DONE_FRAME)
    assert not is_done(b'data: {"x": 1}\n\n')


def test_error_frame_is_openai_shaped() -> None:
    frame = error_frame(BadGateway("cut", code="engine_disconnected"))
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    body = orjson.loads(frame_data(frame) or b"")
    assert body == {
        "error": {
            "message": "cut",
            "type": "upstream_error",
            "param": None,
            "code": "engine_disconnected",
        }
    }


def test_a_frame_data_line_may_follow_its_event_line() -> None:
    frame = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    assert frame_event(frame) == b"response.created"
    assert frame_data(frame) == b'{"type":"response.created"}'
    assert frame_event(b"data: [DONE]\n\n") is None
    assert frame_data(b"event: ping\n\n") is None


def test_replacing_a_frames_data_keeps_its_event_line() -> None:
    frame = b"event: response.created\ndata: {}\n\n"
    assert with_data(frame, b'{"a":1}') == b'event: response.created\ndata: {"a":1}\n\n'
    assert with_data(b"data: {}\n\n", b"[1]") == b"data: [1]\n\n"
