"""What each frame of a chat or completions stream becomes for its client (`FrameFilter`):
forbidden nulls dropped, error codes as strings, usage cut to what the client asked for (the
gateway always asks vLLM for it), token ids it asked for behind the client's back cut out;
and `Frames`, what relay_stream (stream.py) asks of a frame filter (`proxy/events.py`'s
`ResponseEvents` is the Responses API's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import ApiError
from gateway.metering.stream_options import (
    UsageWanted,
    fingerprint_of,
    for_client,
    is_finish,
    with_fingerprint,
)
from gateway.metering.usage import StreamUsage, Usage, choice_of, find_usage
from gateway.proxy.engine_dead import ENGINE_DEAD, engine_dead
from gateway.proxy.normalize import (
    FORBIDDEN_NULL,
    normalize_error,
    normalize_success,
    stream_error_status,
)
from gateway.proxy.sse import DONE_FRAME, error_frame, frame_data, with_data
from gateway.proxy.tool_ids import without_token_ids

_COMMA = ord(",")


def transform_frame(frame: bytes, route: str | None = None, grammar: str | None = None) -> bytes:
    """One frame as the client should see it: forbidden nulls dropped, error codes as strings,
    an error naming the field of `route`'s request it is about (`grammar`: normalize_error)."""
    data = frame_data(frame)
    if data is None or (b"null" not in data and not data.startswith(b'{"error"')):
        return frame
    if data.startswith(b'{"error"'):
        return with_data(frame, normalize_error(stream_error_status(data), data, route, grammar))
    fixed = normalize_success(data)
    return frame if fixed is data else with_data(frame, fixed)


class Frames(Protocol):
    """What relay_stream asks of a frame filter."""

    finished: bool  # the engine ended the stream as its protocol says (not cut off)
    engine_error: int | None  # the status of the error the engine ended it with, if it did
    # Awaited (once) before the frames that finish the stream are sent: a stored response's
    # home noted before its client can see it whole (events.py). None: nothing to wait for.
    before_end: Callable[[], Awaitable[None]] | None

    @property
    def began(self) -> bool:
        """A frame of the answer itself has come (the time to first token is taken then)."""
        ...

    def __call__(self, frame: bytes) -> bytes:
        """The bytes to send the client for one engine frame (may be none, or held ones)."""
        ...

    def release(self) -> bytes:
        """Frames still held back, once the engine's stream is over."""
        ...

    def failure(self, error: ApiError) -> bytes:
        """What ends a stream the gateway has to cut short."""
        ...

    def refusal(self) -> ApiError | None:
        """What a stream the engine dropped means when it is the engine refusing the request
        (the client's doing, not the engine failing); None: the engine failed."""
        ...

    @property
    def usage(self) -> Usage | None:
        """What the engine reported using (so far)."""
        ...


class FrameFilter:
    """Each frame as the client should see it, noting the engine's usage on the way.

    The engine is asked for usage in every frame; the client gets only what it asked for. For
    a client that asked for none, finish frames get back the system_fingerprint vLLM moves to
    the usage frame: from the engine's cache when known; else (an engine's first stream) the
    stream is held from the first finish frame until the usage frame says it, order kept.
    """

    __slots__ = (
        "before_end",
        "cut_usage",
        "engine",
        "engine_error",
        "finished",
        "grammar",
        "held",
        "known",
        "route",
        "tap",
        "token_ids_asked",
        "want",
    )

    def __init__(
        self,
        want: UsageWanted | None,
        n: int,
        engine: str,
        known: dict[str, str],
        *,
        route: str | None = None,
        grammar: str | None = None,
        token_ids_asked: bool = False,
    ) -> None:
        self.tap = StreamUsage(n)
        self.want = want
        self.engine = engine  # its URL
        self.known = known  # engine URL → its system_fingerprint
        self.held: list[bytes] = []  # payloads waiting for the fingerprint, in order
        self.finished = False
        self.before_end: Callable[[], Awaitable[None]] | None = None  # (nothing to wait for)
        self.cut_usage = want is not None and not want.continuous  # from every token frame
        self.engine_error: int | None = None  # the status of the engine's error frame, if sent
        self.route = route  # "completions", …: what an error frame's field names belong to
        self.grammar = grammar  # the field a grammar error is about (normalize_error)
        # The gateway asked the engine for token ids the client did not (tool_ids.py): they are
        # cut out, and the frames vLLM sent only for them are tapped for usage and dropped.
        self.token_ids_asked = token_ids_asked

    @property
    def usage(self) -> Usage | None:
        return self.tap.usage

    @property
    def began(self) -> bool:
        return True  # vLLM's first chat or completions frame comes with the first token

    def failure(self, error: ApiError) -> bytes:
        return error_frame(error) + DONE_FRAME

    def refusal(self) -> ApiError | None:
        return None  # vLLM refuses chat and completions with an error frame

    def __call__(self, frame: bytes) -> bytes:
        if self.token_ids_asked:
            kept = without_token_ids(frame, self.tap)
            if kept is None:  # sent only for its ids: its usage noted, nothing shown
                return b""
            frame = kept
        return self._relayed(frame)

    def _relayed(self, frame: bytes) -> bytes:
        if self.cut_usage and not self.held:
            token = self.token_frame(frame)
            if token is not None:
                return token
        data = frame_data(frame)
        span = None if data is None else find_usage(data)
        if data is None or span is None:
            if data == b"[DONE]":
                self.finished = True
            elif data is not None and data.startswith(b'{"error"'):
                return self.release() + self._engine_error(frame, data)
            return self.release() + transform_frame(frame)
        final = self.tap.feed(data, span)
        want = self.want
        if want is None or want.everything:
            return transform_frame(frame)
        if want.include_usage:
            return _shown(for_client(data, want, span) or data)
        return self._without_usage(data, span, final)

    def _engine_error(self, frame: bytes, data: bytes) -> bytes:
        """The engine's error frame, as the client gets it; its status noted."""
        if ENGINE_DEAD in data:  # (the gateway's 503, as before a stream: engine_dead.py)
            self.engine_error = 503
            return error_frame(engine_dead())
        self.engine_error = stream_error_status(data)
        return transform_frame(frame, self.route, self.grammar)

    def token_frame(self, frame: bytes) -> bytes | None:
        """A token frame as vLLM sends it (`data: {…,"usage":{…}}`, one line, a choice that
        has not finished) without its usage, noted on the way; None for any other frame, for
        the general path to read. The same bytes out and the same usage noted as that path,
        with the same usage span (find_usage), at a third of its CPU: nearly every frame of a
        stream is one of these, and clients rarely ask for their usage."""
        span = find_usage(frame)
        if (
            span is None
            or span[2] != len(frame) - 3  # the usage is the frame's last member: `}\n\n` after it
            or frame[span[0] - 1] != _COMMA
            or not frame.endswith(b"}\n\n")
            or frame.find(b"\n") != len(frame) - 2
            or not frame.startswith(b"data: {")
            or frame.startswith(b'data: {"error"')
            or is_finish(frame)
        ):
            return None
        index = choice_of(frame)
        if index is None:  # the usage frame that ends the stream
            return None
        shown = frame[: span[0] - 1] + b"}\n\n"
        if FORBIDDEN_NULL.search(shown) is not None:
            return None
        self.tap.choices[index] = frame[span[1] : span[2]]
        return shown

    def _without_usage(self, data: bytes, span: tuple[int, int, int], final: bool) -> bytes:
        """A frame for a client that asked for no usage (see the class docstring); `final`:
        the usage-only frame that ends the stream."""
        if final:
            found = fingerprint_of(data)
            if found is not None:
                self.known[self.engine] = found.decode()
            return self.release(found)
        payload = for_client(data, UsageWanted(False, False), span) or data
        if is_finish(payload):
            known = self.known.get(self.engine)
            if known is None:
                self.held.append(payload)
                return b""
            payload = with_fingerprint(payload, known.encode())
        if self.held:
            self.held.append(payload)
            return b""
        return _shown(payload)

    def release(self, fingerprint: bytes | None = None) -> bytes:
        """The held frames, their finish frames with the fingerprint if it is known now."""
        if not self.held:
            return b""
        held, self.held = self.held, []
        if fingerprint is not None:
            held = [with_fingerprint(p, fingerprint) if is_finish(p) else p for p in held]
        return b"".join(_shown(payload) for payload in held)


def _shown(payload: bytes) -> bytes:
    return transform_frame(b"data: " + payload + b"\n\n")
