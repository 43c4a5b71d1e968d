"""What an engine's answer is to the relay (`UpstreamResponse`, `UpstreamBroken`), and the
answers `Upstream.open` hands on after it looked at their first bytes (first_look.py): a 404's
body read whole, or a stream's first frame that is an error (`Read`), a stream's first bytes
read to see that it began (`Begun`)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Literal, Protocol

from gateway.proxy.events import OPENING
from gateway.proxy.h1 import H1Response

Failure = Literal["timeout", "stream_cut", "disconnect", "bad_answer"]


class UpstreamBroken(Exception):
    """The engine went silent (`timeout`) or away (`stream_cut`) while answering."""

    def __init__(self, kind: Failure, cause: BaseException) -> None:
        super().__init__(f"{kind}: {type(cause).__name__}")
        self.kind: Failure = kind
        self.cause = cause


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamBroken."""
        ...

    async def read(self) -> bytes:
        """The whole body; raises UpstreamBroken."""
        ...

    def received(self) -> bytes:
        """What arrived and was not read yet, without waiting."""
        ...

    def release(self) -> None:
        """Done with it, read to the end: the connection may be reused."""
        ...

    def close(self) -> None:
        """Done with it: the connection is closed (the engine aborts what it was doing)."""
        ...


class Read:
    """An answer whose body was read already (a 404 looked at by Upstream.open), or a
    stream's first frame that is an error, as the answer of its `status`."""

    def __init__(
        self,
        resp: UpstreamResponse,
        body: bytes,
        *,
        status: int | None = None,
        content_type: str | None = None,
    ) -> None:
        self._resp = resp
        self._body = body
        self.status = resp.status if status is None else status
        self.content_type = resp.content_type if content_type is None else content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body

    async def read(self) -> bytes:
        return self._body

    def received(self) -> bytes:
        return b""  # (its body is read already: chunks() has it)

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


async def first_bytes(frames: AsyncIterator[bytes]) -> bytes | UpstreamBroken:
    """A stream's first bytes (b"" if it ended at once), or its timeout: silent past the
    idle timeout, it is slow, not gone."""
    try:
        return await anext(frames, b"")
    except UpstreamBroken as exc:
        if exc.kind == "timeout":
            return exc
        raise


# The events vLLM sends as it takes a Responses API request (events.OPENING) come before it
# generates, and before the engine core has it: an engine killed while the request waits in its
# queue sent them.
_EVENT = re.compile(rb"^event: ?([^\r\n]*)", re.M)


def only_opening(first: bytes) -> bool:
    """Whether a Responses API stream's bytes so far are only its opening events. A chat or
    completions stream (its first line `data: …`) is told at once: the search of every line
    took ~10 µs for a stream whose frames came in one read, ~45 µs at 64 frames."""
    if not first.startswith(b"event:"):
        return False
    names = _EVENT.findall(first)
    return bool(names) and all(name.strip() in OPENING for name in names)


async def past_opening(
    frames: AsyncIterator[bytes], first: bytes
) -> tuple[bytes, UpstreamBroken | None] | None:
    """A Responses API stream's bytes up to its first event past the opening ones (with its
    timeout, if it fell silent first: slow, not gone); None when it ended or broke before it.
    (vLLM sends a first frame only with the first token on the other routes.)"""
    read = [first]
    while only_opening(b"".join(read)):
        try:
            more = await anext(frames, None)
        except UpstreamBroken as exc:
            if exc.kind == "timeout":
                return b"".join(read), exc
            return None
        if more is None:
            return None
        read.append(more)
    return b"".join(read), None


class Begun:
    """A stream whose first bytes Upstream.open read to see that it began: those bytes (or
    the failure that came instead), then the rest as it arrives."""

    def __init__(
        self,
        resp: H1Response,
        frames: AsyncIterator[bytes],
        first: bytes,
        failed: UpstreamBroken | None = None,
    ) -> None:
        self._resp = resp
        self._frames = frames
        self._first = first
        self._failed = failed
        self.status = resp.status
        self.content_type = resp.content_type

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        if self._failed is not None:
            raise self._failed
        async for chunk in self._frames:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def received(self) -> bytes:
        return self._resp.received()

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()
