"""The gateway's CPU per streamed frame: what relaying a token costs it, everything on.

    .venv/bin/python -m bench.stream_cpu [--streams 32] [--tokens 64] [--requests 320]
                                         [--passes 3] [--itl-ms 20]

The simulator streams `--tokens` frames per request, one every `--itl-ms` (so that, as from a
real engine, each frame reaches the gateway on its own, not several in one read), to
`--streams` clients in flight through the gateway with auth, limits and metering on (bench
auth mode "limits"; the engine is asked for usage in every frame, as the gateway always asks).
Each pass prints the gateway process's CPU (user + system, from /proc) over the content frames
the clients received: the figure a streaming deployment's gateway CPU scales with, and what it
takes from an engine sharing its cores (bench.engine_streams). The per-request part (auth,
admission, settlement) is in it too, spread over `--tokens` frames.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench import engine_streams
from bench.auth_modes import auth_mode
from bench.engine_streams import Target
from bench.harness import Server, gateway, simulator
from bench.overhead import MODEL, config_for


@dataclass(frozen=True, slots=True)
class Options:
    streams: int = 32
    tokens: int = 64
    requests: int = 320
    passes: int = 3
    itl_ms: float = 20.0


@dataclass(frozen=True, slots=True)
class Pass:
    frames: int
    seconds: float
    cpu_s: float

    @property
    def us_per_frame(self) -> float:
        return 1e6 * self.cpu_s / self.frames


async def run_pass(
    http: aiohttp.ClientSession, via: Target, body: bytes, o: Options, requests: int
) -> int:
    """`requests` streams, `o.streams` in flight, each read to [DONE]; the frames received."""
    outcomes, _ = await engine_streams.run_pass(http, via, [body] * requests, o.streams)
    failed = [got for got in outcomes if not got.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} streams failed, the first: {failed[0]}")
    return sum(got.content_frames for got in outcomes)


async def measure(o: Options) -> list[Pass]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sim_args = ("--itl-ms", f"{o.itl_ms:g}", "--ttft-ms", f"{o.itl_ms:g}")
        async with simulator(MODEL, *sim_args) as sim, auth_mode("limits", tmp) as auth:
            config = config_for(sim, False, auth) + f"metering:\n  spill_dir: {tmp / 'spill'}\n"
            async with gateway(config, tmp) as gw:
                via = engine_streams.Target("gateway", gw.url, await auth.headers(gw.url))
                return await _passes(gw, via, o)


async def _passes(gw: Server, via: Target, o: Options) -> list[Pass]:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": o.tokens,
            "stream": True,
            "ignore_eos": True,
        }
    )
    passes = []
    connector = aiohttp.TCPConnector(limit=o.streams)
    async with aiohttp.ClientSession(connector=connector) as http:
        await run_pass(http, via, body, o, min(o.requests, 2 * o.streams))  # warm
        for _ in range(o.passes):
            cpu, started = gw.cpu_seconds(), time.perf_counter()
            frames = await run_pass(http, via, body, o, o.requests)
            passes.append(Pass(frames, time.perf_counter() - started, gw.cpu_seconds() - cpu))
    return passes


def render(o: Options, passes: list[Pass]) -> str:
    lines = [
        f"streams in flight: {o.streams}  tokens per stream: {o.tokens}  "
        f"requests per pass: {o.requests}  simulator itl ms: {o.itl_ms:g}",
        f"{'pass':>4} {'frames':>7} {'seconds':>8} {'gateway CPU s':>13} {'us per frame':>12}",
    ]
    for i, p in enumerate(passes, 1):
        lines.append(
            f"{i:>4} {p.frames:>7} {p.seconds:>8.2f} {p.cpu_s:>13.2f} {p.us_per_frame:>12.1f}"
        )
    median = statistics.median(p.us_per_frame for p in passes)
    lines.append(f"gateway CPU us per frame, median pass: {median:.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=32, help="streams in flight")
    parser.add_argument("--tokens", type=int, default=64, help="frames per stream")
    parser.add_argument("--requests", type=int, default=320, help="streams per pass")
    parser.add_argument("--passes", type=int, default=3, help="measured passes")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="simulator's time per frame")
    args = parser.parse_args()
    o = Options(args.streams, args.tokens, args.requests, args.passes, args.itl_ms)
    print(render(o, asyncio.run(measure(o))), flush=True)


if __name__ == "__main__":
    main()
