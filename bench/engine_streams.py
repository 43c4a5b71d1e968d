"""Streaming through a real vLLM engine: tokens/s and TTFT straight to it and through the gateway.

    .venv/bin/python -m bench.engine_streams [--streams 32] [--max-tokens 64] [--rounds 2]
                                             [--waves 3]

One vLLM CPU engine (the bundled SmolLM2-135M, prepared by `make engine`; its start takes ~40 s)
and one gateway in front of it with everything on: Redis, an API key whose rpm, tpm and
concurrency limits are far too high to refuse, and the usage ledger. The same load, `--streams`
streaming chat completions in flight for `--waves` times `--streams` requests, each `--max-tokens`
tokens long (temperature 0, `ignore_eos` so every stream is as long as asked), goes straight to
the engine and through the gateway in turn (direct, gateway, direct, gateway, …) so that drift
on a shared machine hits both sides alike. Tokens/s is completion tokens (from the streams'
usage) over the wall time of a pass; TTFT is the time to the first frame with content.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.auth_modes import auth_mode
from bench.harness import Streamed, gateway, percentile, stream_chat
from gateway.embedded.engine import EngineSpec, running_engine
from gateway.embedded.paths import CHAT_MODEL_NAME, EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.netutil import free_port

SIDES = ("direct", "gateway")
PROMPT = "Write a short story about a lighthouse keeper and a storm."
WARM_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Options:
    streams: int = 32
    max_tokens: int = 64
    rounds: int = 2
    waves: int = 3


@dataclass(frozen=True, slots=True)
class Pass:
    """One side's share of one round."""

    side: str
    round: int
    streams: int  # completed with [DONE]
    errors: int
    tokens: int
    seconds: float
    ttft_ms: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True, slots=True)
class Side:
    """One side over all rounds: tokens over the summed time, TTFT over all streams."""

    side: str
    streams: int
    errors: int
    tokens: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @classmethod
    def of(cls, side: str, passes: list[Pass]) -> Side:
        mine = [p for p in passes if p.side == side]
        ttft = [t for p in mine for t in p.ttft_ms]
        return cls(
            side,
            sum(p.streams for p in mine),
            sum(p.errors for p in mine),
            sum(p.tokens for p in mine),
            sum(p.seconds for p in mine),
            percentile(ttft, 0.5),
            percentile(ttft, 0.99),
        )


@dataclass(frozen=True, slots=True)
class Figures:
    options: Options
    ignore_eos: bool
    passes: list[Pass]
    direct: Side
    gateway: Side

    @property
    def throughput_ratio(self) -> float:
        return self.gateway.tokens_per_s / self.direct.tokens_per_s

    @property
    def round_ratios(self) -> list[float]:
        """Gateway over direct tokens/s within each round: drift between rounds cancels out."""
        by_round = {(p.side, p.round): p.tokens_per_s for p in self.passes}
        rounds = sorted({p.round for p in self.passes})
        return [by_round["gateway", r] / by_round["direct", r] for r in rounds]

    @property
    def added_ttft_p50_ms(self) -> float:
        return self.gateway.ttft_p50_ms - self.direct.ttft_p50_ms

    @property
    def added_ttft_p99_ms(self) -> float:
        return self.gateway.ttft_p99_ms - self.direct.ttft_p99_ms

    @property
    def errors(self) -> int:
        return self.direct.errors + self.gateway.errors


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    headers: dict[str, str]


def payload(max_tokens: int, ignore_eos: bool) -> bytes:
    body: dict[str, object] = {
        "model": CHAT_MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return orjson.dumps(body)


async def run_pass(
    http: aiohttp.ClientSession, target: Target, body: bytes, total: int, concurrency: int
) -> tuple[list[Streamed], float]:
    """`total` streams with `concurrency` in flight; the outcomes and the wall time."""
    url = f"{target.url}/v1/chat/completions"
    headers = {"content-type": "application/json", **target.headers}
    outcomes: list[Streamed] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            outcomes.append(await stream_chat(http, url, body, headers))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


def summarise(side: str, round_no: int, outcomes: list[Streamed], seconds: float) -> Pass:
    good = [o for o in outcomes if o.ok]
    tokens = sum(o.completion_tokens or o.content_frames for o in good)
    ttft = [o.ttft_ms for o in good if o.ttft_ms is not None]
    return Pass(side, round_no, len(good), len(outcomes) - len(good), tokens, seconds, ttft)


async def accepts_ignore_eos(http: aiohttp.ClientSession, engine: str) -> bool:
    """Whether this vLLM takes `ignore_eos` (a vLLM sampling extra, not OpenAI's)."""
    body: dict[str, object] = {"model": CHAT_MODEL_NAME, "max_tokens": 2, "ignore_eos": True}
    body["messages"] = [{"role": "user", "content": "hi"}]
    async with http.post(f"{engine}/v1/chat/completions", json=body) as resp:
        return resp.status == 200


@asynccontextmanager
async def engine_and_gateway(tmp: Path) -> AsyncIterator[tuple[Target, Target]]:
    """The engine and a gateway with limits, a key and the ledger in front of it."""
    ready = await prepare(EmbeddedPaths.resolve())
    spec = EngineSpec(
        ready.engine_python, ready.chat_model, CHAT_MODEL_NAME, free_port(), tmp / "engine.log"
    )
    async with running_engine(spec) as engine, auth_mode("limits", tmp) as auth:
        config = (
            f"access_log: false\nlog_level: warning\n{auth.config}"
            f"metering:\n  spill_dir: {tmp / 'spill'}\n"
            f"models:\n  - name: {CHAT_MODEL_NAME}\n    engines: [{engine}]\n"
        )
        async with gateway(config, tmp) as gw:
            yield Target(engine, {}), Target(gw.url, await auth.headers(gw.url))


async def measure(options: Options) -> Figures:
    """Start the engine and the gateway, warm both paths, then alternate the sides."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            engine_and_gateway(Path(tmp)) as (direct, via),
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=options.streams),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            ) as http,
        ):
            ignore_eos = await accepts_ignore_eos(http, direct.url)
            targets = dict(zip(SIDES, (direct, via), strict=True))
            warm = payload(WARM_TOKENS, ignore_eos)
            for target in targets.values():
                outcomes, _ = await run_pass(http, target, warm, options.streams, options.streams)
                if not all(o.ok for o in outcomes):
                    bad = next(o for o in outcomes if not o.ok)
                    raise RuntimeError(f"warm-up failed at {target.url}: {bad}")
            body = payload(options.max_tokens, ignore_eos)
            total = options.streams * options.waves
            passes = []
            for round_no in range(1, options.rounds + 1):
                for side, target in targets.items():
                    outcomes, seconds = await run_pass(http, target, body, total, options.streams)
                    passes.append(summarise(side, round_no, outcomes, seconds))
    sides = Side.of("direct", passes), Side.of("gateway", passes)
    return Figures(options, ignore_eos, passes, *sides)


def render(figures: Figures) -> str:
    o = figures.options
    lines = [
        f"streams in flight: {o.streams}  max_tokens: {o.max_tokens}  waves: {o.waves}  "
        f"rounds: {o.rounds}  ignore_eos: {str(figures.ignore_eos).lower()}",
        f"{'side':<8} {'round':>5} {'streams':>7} {'errors':>6} {'tokens':>7} {'seconds':>8} "
        f"{'tokens/s':>9} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11}",
    ]
    for p in figures.passes:
        lines.append(
            f"{p.side:<8} {p.round:>5} {p.streams:>7} {p.errors:>6} {p.tokens:>7} "
            f"{p.seconds:>8.2f} {p.tokens_per_s:>9.1f} {percentile(p.ttft_ms, 0.5):>11.1f} "
            f"{percentile(p.ttft_ms, 0.99):>11.1f}"
        )
    for s in (figures.direct, figures.gateway):
        lines.append(
            f"{s.side:<8} {'all':>5} {s.streams:>7} {s.errors:>6} {s.tokens:>7} "
            f"{s.seconds:>8.2f} {s.tokens_per_s:>9.1f} {s.ttft_p50_ms:>11.1f} "
            f"{s.ttft_p99_ms:>11.1f}"
        )
    lines += [
        f"tokens/s ratio (gateway/direct): {figures.throughput_ratio:.3f}",
        f"tokens/s ratio per round: {' '.join(f'{r:.3f}' for r in figures.round_ratios)}",
        f"added TTFT p50 ms: {figures.added_ttft_p50_ms:.1f}",
        f"added TTFT p99 ms: {figures.added_ttft_p99_ms:.1f}",
        f"errors: {figures.errors}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=32, help="streams in flight")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=2, help="direct+gateway rounds")
    parser.add_argument("--waves", type=int, default=3, help="requests per pass / streams")
    args = parser.parse_args()
    options = Options(args.streams, args.max_tokens, args.rounds, args.waves)
    print(render(asyncio.run(measure(options))), flush=True)


if __name__ == "__main__":
    main()
