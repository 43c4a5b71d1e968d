"""Streams always carry usage from the engine; the client sees only the usage it asked for.

The request body is changed only when it is a stream: without `stream_options` the field is
spliced in after the opening brace (the rest stays byte for byte); with it, the parsed body is
re-serialised with the two flags set. Frames then lose what the client did not ask for: the
`usage` of each chunk (`continuous_usage_stats`) and the final usage-only chunk
(`include_usage`). The rest of each frame is passed on byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import exact_json
from gateway.metering.usage import find_usage, is_final_usage

FORCED_USAGE = {"include_usage": True, "continuous_usage_stats": True}
_SPLICE = b'"stream_options":' + orjson.dumps(FORCED_USAGE) + b","
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_FINGERPRINT = re.compile(rb'"system_fingerprint"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class UsageWanted:
    """What the client asked for in its own `stream_options`."""

    include_usage: bool
    continuous: bool

    @property
    def everything(self) -> bool:
        return self.include_usage and self.continuous


def wanted(body: dict[str, Any]) -> UsageWanted:
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return UsageWanted(False, False)
    include = options.get("include_usage") is True
    return UsageWanted(include, include and options.get("continuous_usage_stats") is True)


def force_usage(raw: bytes, body: dict[str, Any]) -> bytes:
    """The body of a stream request, asking the engine for usage in every chunk."""
    options = body.get("stream_options")
    if options is None and "stream_options" not in body:
        start = raw.find(b"{")
        return raw[: start + 1] + _SPLICE + raw[start + 1 :]
    if options is not None and not isinstance(options, dict):
        return raw  # invalid: the engine's 400 names the field
    return exact_json.dumps({**body, "stream_options": {**(options or {}), **FORCED_USAGE}})


def is_finish(payload: bytes) -> bool:
    """A choice's last frame (finish_reason set)."""
    return _FINISHED.search(payload) is not None


def fingerprint_of(payload: bytes) -> bytes | None:
    found = _FINGERPRINT.search(payload)
    return None if found is None else found.group(1)


def with_fingerprint(payload: bytes, fingerprint: bytes) -> bytes:
    """A finish frame with the system_fingerprint vLLM puts there when usage is not asked for
    (it moves it to the usage frame otherwise)."""
    if b'"system_fingerprint"' in payload or not payload.endswith(b"}"):
        return payload
    return payload[:-1] + b',"system_fingerprint":"' + fingerprint + b'"}'


def for_client(
    payload: bytes, want: UsageWanted, span: tuple[int, int, int] | None = None
) -> bytes | None:
    """One SSE payload as the client asked for it; None drops the frame. `span`: the payload's
    find_usage(), if the caller has it."""
    if want.everything:
        return payload
    span = span or find_usage(payload)
    if span is None:
        return payload
    if is_final_usage(payload):
        return payload if want.include_usage else None
    if want.continuous:
        return payload
    return _cut(payload, span[0], span[2])


def _cut(payload: bytes, start: int, end: int) -> bytes:
    """Remove the member `"usage":{…}` at [start, end) and the comma that joined it."""
    before = payload[:start].rstrip()
    after = payload[end:].lstrip()
    if before.endswith(b","):
        return before[:-1] + after
    if after.startswith(b","):
        return before + after[1:].lstrip()
    return before + after
