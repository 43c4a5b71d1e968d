"""Server-sent-event framing: split an upstream byte stream into whole frames (`data:` lines,
after an `event:` line in the Responses API)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.errors import ApiError

DONE_FRAME = b"data: [DONE]\n\n"
_SEPARATOR = b"\n\n"
_DATA = b"data: "
_NEXT_DATA = b"\n\ndata: "


class FrameSplitter:
    """Feed raw chunks in, get complete frames (each ending in a blank line) out.

    A frame is kept byte for byte as the engine sent it; only the boundaries are found.
    CRLF line endings are normalised to LF, which SSE treats the same.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        return split_frames(self.feed_block(chunk))

    def feed_block(self, chunk: bytes) -> bytes:
        """The complete frames now at hand as one run of bytes (b"" if none): what `feed`
        splits, for a reader that takes them all at once (data_array)."""
        buf = self._pending + chunk if self._pending else chunk
        if b"\r" in buf:  # the whole buffer: a CRLF may be cut between two chunks
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(_SEPARATOR)
        if end < 0:
            self._pending = buf
            return b""
        self._pending = buf[end + 2 :]
        return buf[: end + 2]

    @property
    def pending(self) -> bytes:
        return self._pending


def split_frames(block: bytes) -> list[bytes]:
    """A run of complete frames (FrameSplitter.feed_block) as its frames, blank lines left out."""
    return [frame + _SEPARATOR for frame in block.split(_SEPARATOR) if frame.strip()]


def data_array(block: bytes) -> bytes | None:
    """The payloads of a run of complete frames as one JSON array (`[p1,p2,...]`, a final
    `[DONE]` left out), made with one replace instead of a split and a slice per frame; None
    unless every frame is one `data: ` line, and the caller then reads frame by frame. What
    vLLM sends for chat and completions qualifies.

    Once every blank line followed by `data: ` has become a comma, a newline left anywhere
    means a frame of another shape (a comment, an `event:` line, a blank line too many). A
    payload that is not JSON (a `[DONE]` before the end, an empty one) makes the array fail to
    load: the caller then reads frame by frame too.
    """
    if block.endswith(DONE_FRAME):
        block = block[: -len(DONE_FRAME)]
        if not block:
            return b"[]"
    if not block.startswith(_DATA):
        return None
    inner = block[6:-2].replace(_NEXT_DATA, b",")
    return None if b"\n" in inner else b"[" + inner + b"]"


def _data_span(frame: bytes) -> tuple[int, int] | None:
    """Where the `data:` line's value is: after an `event:` line too (the Responses API)."""
    if frame.startswith(b"data:"):
        start = 5
    else:
        at = frame.find(b"\ndata:")
        if at < 0:
            return None
        start = at + 6
    end = frame.find(b"\n", start)
    return start, len(frame) if end < 0 else end


def frame_data(frame: bytes) -> bytes | None:
    """The payload of a frame's (first) `data:` line, or None for comments and other fields."""
    span = _data_span(frame)
    return None if span is None else frame[span[0] : span[1]].strip()


def frame_event(frame: bytes) -> bytes | None:
    """The `event:` field of a frame (the Responses API names every event), if it has one."""
    if not frame.startswith(b"event:"):
        return None
    end = frame.find(b"\n")
    return frame[6 : len(frame) if end < 0 else end].strip()


def with_data(frame: bytes, payload: bytes) -> bytes:
    """The frame with its data line's payload replaced, its other lines (`event:`) kept."""
    span = _data_span(frame)
    if span is None:
        return b"data: " + payload + _SEPARATOR
    return frame[: span[0] - 5] + b"data: " + payload + (frame[span[1] :] or _SEPARATOR)


def is_done(frame: bytes) -> bool:
    return frame_data(frame) == b"[DONE]"


def error_frame(error: ApiError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + _SEPARATOR


async def iter_frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Group an upstream chunk stream into batches of complete frames, as they arrive."""
    splitter = FrameSplitter()
    async for chunk in chunks:
        frames = splitter.feed(chunk)
        if frames:
            yield frames
