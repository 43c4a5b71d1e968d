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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.auth_modes import auth_mode
from bench.harness import Server, gateway, simulator, stream_chat

MODEL = "bench-stream"


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
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], o: Options
) -> int:
    """`o.requests` streams, `o.streams` in flight, each read to [DONE]; the frames received."""
    remaining, frames = o.requests, 0

    async def client() -> None:
        nonlocal remaining, frames
        while remaining > 0:
            remaining -= 1
            got = await stream_chat(http, url, body, headers)
            if not got.ok:
                raise RuntimeError(f"stream failed: {got}")
            frames += got.content_frames

    await asyncio.gather(*(client() for _ in range(o.streams)))
    return frames


async def measure(o: Options) -> list[Pass]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        sim_args = ("--itl-ms", f"{o.itl_ms:g}", "--ttft-ms", f"{o.itl_ms:g}")
        async with simulator(MODEL, *sim_args) as sim, auth_mode("limits", tmp) as auth:
            config = (
                f"access_log: false\nlog_level: warning\n{auth.config}"
                f"metering:\n  spill_dir: {tmp / 'spill'}\n"
                f"models:\n  - name: {MODEL}\n    engines: [{sim}]\n"
            )
            async with gateway(config, tmp) as gw:
                return await _passes(gw, await auth.headers(gw.url), o)


async def _passes(gw: Server, auth: dict[str, str], o: Options) -> list[Pass]:
    url = f"{gw.url}/v1/chat/completions"
    headers = {"content-type": "application/json", **auth}
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
        warm = Options(o.streams, o.tokens, min(o.requests, 2 * o.streams), 1, o.itl_ms)
        await run_pass(http, url, body, headers, warm)
        for _ in range(o.passes):
            cpu, started = gw.cpu_seconds(), time.perf_counter()
            frames = await run_pass(http, url, body, headers, o)
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
    best = sorted(p.us_per_frame for p in passes)[len(passes) // 2]
    lines.append(f"gateway CPU us per frame, median pass: {best:.1f}")
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
