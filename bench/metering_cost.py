"""What metering costs on the request path: per stream frame, and per request body.

Every stream now carries vLLM's continuous usage (the gateway asks for it), so each frame is
tapped for usage and, for a client that did not ask for it, has its `usage` cut out. This
prints those per-frame costs beside the plain frame transform of a frame without usage, and
the cost of asking for usage in a request body. Frames are shaped like vLLM 0.32's.

    .venv/bin/python -m bench.metering_cost
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import orjson

from gateway.metering.stream_options import UsageWanted, force_usage
from gateway.metering.usage import usage_of
from gateway.proxy.frame_filter import FrameFilter, transform_frame

HEAD = (
    b'data: {"id":"chatcmpl-ad66c813e730ffd4","object":"chat.completion.chunk",'
    b'"created":1795347754,"model":"smollm2-135m-instruct","choices":[{"index":0,'
    b'"delta":{"content":" Paris"},"logprobs":null,"finish_reason":null,"token_ids":null}]'
)
PLAIN_FRAME = HEAD + b"}\n\n"
USAGE_FRAME = HEAD + b',"usage":{"prompt_tokens":37,"total_tokens":45,"completion_tokens":8}}\n\n'
REQUEST = orjson.dumps(
    {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of France? " * 20}],
        "stream": True,
        "max_tokens": 64,
        "temperature": 0,
    }
)


def per_call_us(fn: Callable[[], object], number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    known: dict[str, str] = {}
    quiet = FrameFilter(UsageWanted(False, False), 1, "http://engine", known)
    everything = FrameFilter(UsageWanted(True, True), 1, "http://engine", known)
    body = orjson.loads(REQUEST)
    rows = [
        ("frame without usage: transform (before metering)", lambda: transform_frame(PLAIN_FRAME)),
        ("frame with usage: tap + cut usage (client asked none)", lambda: quiet(USAGE_FRAME)),
        ("frame with usage: tap only (client asked for all)", lambda: everything(USAGE_FRAME)),
        ("usage of a body (regex)", lambda: usage_of(USAGE_FRAME)),
        ("stream request: splice stream_options in", lambda: force_usage(REQUEST, body)),
    ]
    base = per_call_us(rows[0][1])
    for name, fn in rows:
        cost = per_call_us(fn)
        print(f"{name:<56} {cost:6.2f} us  ({cost / base:4.1f}x the plain transform)")


if __name__ == "__main__":
    main()
