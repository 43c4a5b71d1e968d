"""vLLM's own streams take the gateway's short paths for reading frames (sse.data_array for a
collected answer, FrameFilter's token-frame path for a relayed stream), and read there as the
general path reads them: a change in vLLM's frames that left the short paths would show here,
not as a silent loss of CPU."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.metering.stream_options import FORCED_USAGE, UsageWanted
from gateway.proxy.collect import chunks_of
from gateway.proxy.frame_filter import FrameFilter
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, data_array
from tests.e2e.conftest import CHAT, E2E

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

MESSAGES: Any = [{"role": "user", "content": "Name three colours."}]


async def vllm_stream(e2e: E2E, route: str, body: dict[str, Any]) -> bytes:
    """The engine's stream as the gateway asks for it: usage in every frame."""
    body = {**body, "model": CHAT, "stream": True, "stream_options": FORCED_USAGE}
    async with e2e.http.post(f"{e2e.engines.chat}/v1/{route}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("chat/completions", {"messages": MESSAGES, "max_tokens": 16, "temperature": 0}),
        ("completions", {"prompt": "One, two, three,", "max_tokens": 16, "temperature": 0}),
    ],
)
async def test_vllm_frames_take_the_short_paths(e2e: E2E, route: str, body: Any) -> None:
    raw = await vllm_stream(e2e, route, body)
    frames = FrameSplitter().feed(raw)
    assert frames[-1] == DONE_FRAME
    block = FrameSplitter().feed_block(raw)

    array = data_array(block)
    assert array is not None, raw[:600]
    assert len(orjson.loads(array)) == len(frames) - 1
    assert chunks_of(block)[1] is None

    tokens = [f for f in frames if b'"finish_reason":null' in f and b'"usage":{' in f]
    assert len(tokens) >= 10, raw[:600]
    shown = FrameFilter(UsageWanted(False, False), 1, e2e.engines.chat, {})
    untaken = [f for f in tokens if shown.token_frame(f) is None]
    # vLLM puts fields after the usage of a chat stream's first frame (the role): that one
    # frame takes the general path; every token frame takes the short one
    assert len(untaken) <= (route == "chat/completions"), untaken[:2]
    assert all(b'"role":"assistant"' in f for f in untaken), untaken

    for want in (UsageWanted(False, False), UsageWanted(True, False)):
        sent = []
        for short in (True, False):
            relay = FrameFilter(want, 1, e2e.engines.chat, {e2e.engines.chat: "fp"})
            relay.cut_usage = short and relay.cut_usage
            out = b"".join(relay(f) for f in frames) + relay.release()
            sent.append((out, relay.usage))
        assert sent[0] == sent[1]
        assert b'"usage"' not in sent[0][0].split(b"\n\n")[0]  # token frames lost their usage
