"""Usage while vLLM's tool-call parser holds tokens back.

With `tools`, vLLM streams nothing while its tool parser cannot yet say anything (a call's name
and opening: 22 tokens in one measured call), so no running usage either, and a request cut
then was billed none of them. It still sends a chunk for every token when it was asked for
token ids (`return_token_ids`), each with its usage. So the gateway asks for them on a chat
request with tools (one whose client did not), cuts the ids out of what the client sees, and
taps the chunks sent only for them for their usage and drops them: the client's stream and
body are vLLM's, the bill counts every token.
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


def asks_token_ids(route: str, body: dict[str, Any]) -> bool:
    """Whether to ask the engine for token ids the client did not: a chat request that may
    call a tool (vLLM's tool parser holds tokens back then)."""
    if route != "chat/completions" or body.get("return_token_ids"):
        return False
    tools = body.get("tools")
    return isinstance(tools, list) and bool(tools) and body.get("tool_choice") != "none"


def with_token_ids(body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The body asking for token ids (raw, parsed)."""
    asked = {**body, "return_token_ids": True}
    return exact_json.dumps(asked), asked


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
