"""Server-sent-event framing: split an upstream byte stream into whole `data:` frames."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.errors import ApiError

DONE_FRAME = b"data: [DONE]\n\n"
_SEPARATOR = b"\n\n"


class FrameSplitter:
    """Feed raw chunks in, get complete frames (each ending in a blank line) out.

    A frame is kept byte for byte as the engine sent it; only the boundaries are found.
    CRLF line endings are normalised to LF, which SSE treats the same.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self._pending + chunk if self._pending else chunk
        end = buf.rfind(_SEPARATOR)
        if end < 0:
            self._pending = buf
            return []
        self._pending = buf[end + 2 :]
        return [frame + _SEPARATOR for frame in buf[:end].split(_SEPARATOR) if frame.strip()]

    @property
    def pending(self) -> bytes:
        return self._pending


def frame_data(frame: bytes) -> bytes | None:
    """The payload of a single-line `data:` frame, or None for comments and other fields."""
    if not frame.startswith(b"data:"):
        return None
    return frame[5:].strip()


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
