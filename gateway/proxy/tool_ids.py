"""Usage while vLLM holds a chat's tokens back.

vLLM 0.32's chat stream sends no chunk for a token that adds no text, so no running usage
either, and a request cut then was billed none of those tokens: while its tool parser cannot
yet say anything (a call's name and opening: 22 tokens in one measured call), while the text
ends in part of a character (emoji, CJK: a `logit_bias` toward a character's first byte made
every token so, and a request abandoned after 46 was billed 0), or may be the start of a
`stop` string. It still sends a chunk for every token when it was asked for token ids
(`return_token_ids`), each with its usage. So the gateway asks for them on every chat request
whose client did not, cuts the ids out of what the client sees, and taps the chunks sent only
for them for their usage and drops them: the client's stream and body are vLLM's, the bill
counts every token. (Text completions send a chunk with `"text":""` for such tokens.)
"""

from __future__ import annotations

import re
from typing import Any

from gateway import exact_json
from gateway.metering.usage import StreamUsage, find_usage
from gateway.proxy.sse import frame_data

# `"token_ids":[…]` in a choice, `"prompt_token_ids":[…]` in the first chunk: null, as vLLM
# writes them when not asked (set to None, so present: it writes with exclude_unset).
_IDS = re.compile(rb'"(token_ids|prompt_token_ids)":\[[0-9,]*\]')
# A chunk vLLM sent only for its token ids: nothing said, nothing finished.
_NOTHING = re.compile(rb'"delta":\{\},"logprobs":null,"finish_reason":null,"token_ids":null\}')


_ASK = b'"return_token_ids":true,'


def asks_token_ids(route: str, body: dict[str, Any]) -> bool:
    """Whether to ask the engine for token ids the client did not: every chat request (vLLM
    sends no chunk, so no usage, for a token that adds no text)."""
    return route == "chat/completions" and not body.get("return_token_ids")


def with_token_ids(raw: bytes, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The body asking for token ids (raw, parsed): spliced in after the opening brace (the
    rest byte for byte), or the body written again if it has the field already (false)."""
    asked = {**body, "return_token_ids": True}
    if "return_token_ids" in body:
        return exact_json.dumps(asked), asked
    start = raw.find(b"{")
    return raw[: start + 1] + _ASK + raw[start + 1 :], asked


def without_token_ids(frame: bytes, tap: StreamUsage) -> bytes | None:
    """`frame` without the ids the client did not ask for; None for a chunk sent only for
    them, whose usage `tap` notes."""
    if b'token_ids":[' not in frame:
        return frame
    frame = _IDS.sub(rb'"\1":null', frame)
    if _NOTHING.search(frame) is None:
        return frame
    data = frame_data(frame)
    if data is not None:
        span = find_usage(data)
        if span is not None:
            tap.feed(data, span)
    return None
