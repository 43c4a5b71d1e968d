"""What reading an engine's stream costs the gateway per request, fast path beside general path.

    .venv/bin/python -m bench.frame_paths [--tokens 16 64] [--number 2000]

The stream is vLLM's chat stream as the gateway asks for it (usage in every frame), made by
the simulator's frame builder. Two readers, each timed both ways in the same process:

- collected (a non-streaming request, gateway/proxy/collect.py): every frame's data split
  out, sliced and loaded in one array ("frame by frame"), or the run of frames turned into
  that array with one replace (`sse.data_array`); then the chunks fed to the assembler and
  the body built;
- relayed (a stream for a client that asked for no usage, gateway/proxy/frame_filter.py): each
  frame through FrameFilter's general path, or its token-frame path.

Each case is read as one read (the zero-delay simulator's whole answer arrives at once) and
as one read per frame (a real engine's tokens arrive one by one). Prints microseconds per
request (best of 5 repeats) and the ratio fast / general.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from gateway.metering.stream_options import FORCED_USAGE, UsageWanted
from gateway.metering.usage import StreamUsage
from gateway.proxy.assemble import assembler_for
from gateway.proxy.collect import chunks_of, payloads_of
from gateway.proxy.frame_filter import FrameFilter
from gateway.proxy.normalize import normalize_success
from gateway.proxy.sse import DONE_FRAME, FrameSplitter, split_frames
from gateway.sim.protocol import Chunks

REQUEST: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Say hi"}]}
PROMPT_TOKENS = 8


def vllm_stream(tokens: int) -> list[bytes]:
    """The frames of one chat stream with usage in every frame, [DONE] last."""
    chunks = Chunks("chat", "m", continuous_usage=True)
    frames = [chunks.role(0, PROMPT_TOKENS)]
    for step in range(tokens):
        finish = "length" if step == tokens - 1 else None
        frames.append(chunks.token(0, f" w{step}", finish, PROMPT_TOKENS, step + 1))
    frames.append(chunks.usage(PROMPT_TOKENS, tokens))
    return [*frames, DONE_FRAME]


def collect(reads: list[bytes], fast: bool) -> bytes:
    """A collected answer's body from the engine's reads (collect_stream's loop)."""
    splitter, tap = FrameSplitter(), StreamUsage(1)
    assembler = assembler_for("chat/completions", {**REQUEST, "stream_options": FORCED_USAGE})
    for read in reads:
        block = splitter.feed_block(read)
        if not block:
            continue
        if fast:
            loaded, _ = chunks_of(block)
        else:
            loaded = orjson.loads(b"[" + b",".join(payloads_of(split_frames(block))) + b"]")
        for chunk in loaded:
            tap.feed_chunk(chunk)
            assembler.feed(chunk)
    return normalize_success(orjson.dumps(assembler.body()))


def relay(reads: list[bytes], fast: bool) -> bytes:
    """What a client that asked for no usage is sent (relay_stream's loop)."""
    splitter = FrameSplitter()
    shown = FrameFilter(UsageWanted(False, False), 1, "http://engine", {"http://engine": "fp"})
    shown.cut_usage = fast and shown.cut_usage
    out = [b"".join([shown(frame) for frame in splitter.feed(read)]) for read in reads]
    return b"".join(out) + shown.release()


def best_us(run: Callable[[], bytes], number: int) -> float:
    return min(timeit.repeat(run, number=number, repeat=5)) / number * 1e6


def main(token_counts: list[int], number: int) -> None:
    print(f"{'reader':<10} {'tokens':>6} {'reads':>9} {'general us':>11} {'fast us':>8} ratio")
    for tokens in token_counts:
        frames = vllm_stream(tokens)
        for reader in (collect, relay):
            for shape, reads in (("one", [b"".join(frames)]), ("per frame", frames)):
                assert reader(reads, True) == reader(reads, False)  # the same bytes either way
                general = best_us(partial(reader, reads, False), number)
                fast = best_us(partial(reader, reads, True), number)
                print(
                    f"{reader.__name__ + 'ed':<10} {tokens:>6} {shape:>9} {general:>11.1f} "
                    f"{fast:>8.1f} "
                    f"{fast / general:.2f}"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--number", type=int, default=2000, help="runs per repeat")
    args = parser.parse_args()
    main(args.tokens, args.number)
