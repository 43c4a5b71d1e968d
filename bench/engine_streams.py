"""Streaming through a real vLLM engine: tokens/s and TTFT straight to it and through the gateway.

    .venv/bin/python -m bench.engine_streams [--streams 32] [--max-tokens 64] [--rounds 2]
                                             [--waves 3] [--seed 0] [--engine URL]
                                             [--direct-usage]

One vLLM CPU engine (the bundled SmolLM2-135M, prepared by `make engine`; its start takes ~40 s)
— or, with `--engine URL`, one already serving that model under its bundled name — and one
gateway in front of it with everything on: Redis, an API key whose rpm, tpm and
concurrency limits are far too high to refuse, and the usage ledger. `--streams` streaming chat
completions stay in flight for `--waves` times `--streams` requests per pass (temperature 0,
`ignore_eos` so every stream is as long as asked). Their lengths average `--max-tokens` and
vary by up to half of it (seeded; the same lengths in every pass, summing to the same tokens),
so streams end and start at different steps of the engine, as under real traffic, not in
lock-step waves whose every start waits for one batched prefill.

Each round has three passes:
- **direct** and **gateway** alone, in turn, for tokens/s: completion tokens (from the
  streams' usage) over the pass's wall time. Direct goes first in odd rounds, the gateway in
  even ones (`order`), so a machine that drifts over the run (the engine slowing, a neighbour
  waking) weighs on both sides alike instead of always on the side that runs second; keep
  `--rounds` even for that balance.
- **paired**: both sides at once, for TTFT (sending to the first frame with content): every
  request goes to the engine directly and through the gateway at the same moment (which of
  the two is sent first alternates), `--streams` / 2 pairs in flight. The two streams of a pair
  reach the engine within the gateway's own delay of each other, so they nearly always join
  the same engine step and get their first token from it together: the difference of a
  pair's TTFTs is what the gateway adds, not the luck of when the request landed (a TTFT
  moves by a whole engine step, ~100 ms, with that; whole-pass TTFTs by hundreds of ms between
  passes). The added TTFT is the median of those differences, with a 95% interval
  (bootstrap over the pairs).
The gateway's CPU milliseconds in each pass are printed too (what it takes from the engine's cores).

The gateway asks vLLM for usage in every frame of every stream (`continuous_usage_stats`: a
stream cut short is billed by it), which costs vLLM's API server some CPU on the cores the
engine uses. `--direct-usage` has the direct side ask for it too: the difference left between
the sides is then the gateway's own cost, and against a run without it, the usage's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.auth_modes import auth_mode
from bench.harness import Server, Streamed, gateway, percentile, stream_chat
from gateway.embedded.engine import EngineSpec, running_engine
from gateway.embedded.paths import CHAT_MODEL_NAME, EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.netutil import free_port

SIDES = ("direct", "gateway")
PAIRED = "paired"
BOOTSTRAP_DRAWS = 2000
PROMPT = "Write a short story about a lighthouse keeper and a storm."
WARM_TOKENS = 4


@dataclass(frozen=True, slots=True)
class Options:
    streams: int = 32
    max_tokens: int = 64
    rounds: int = 2
    waves: int = 3
    seed: int = 0
    engine: str | None = None  # an engine already serving the bundled chat model; else one starts
    # The direct side asks vLLM for usage in every frame too, as the gateway does for metering:
    # what is left between the sides is then the gateway's own cost, not that of the usage.
    direct_usage: bool = False


@dataclass(frozen=True, slots=True)
class Pass:
    """One side's share of one pass: alone (`paired` False) or paired with the other side."""

    side: str
    round: int
    streams: int  # completed with [DONE]
    errors: int
    tokens: int
    seconds: float  # the pass's wall time (a paired pass's, shared by both sides)
    ttft_ms: list[float]
    gateway_cpu_s: float = 0.0  # the gateway process's CPU over the pass
    paired: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True, slots=True)
class Side:
    """One side over its passes alone: tokens over the summed time, TTFT over their streams."""

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
        mine = [p for p in passes if p.side == side and not p.paired]
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
    passes: list[Pass]  # alone and paired, in the order run
    direct: Side  # the passes alone
    gateway: Side
    pairs: list[tuple[float, float]]  # (direct, gateway) TTFT ms of each pair both sides served

    @property
    def throughput_ratio(self) -> float:
        return self.gateway.tokens_per_s / self.direct.tokens_per_s

    @property
    def round_ratios(self) -> list[float]:
        """Gateway over direct tokens/s within each round: drift between rounds cancels out."""
        by_round = {(p.side, p.round): p.tokens_per_s for p in self.passes if not p.paired}
        rounds = sorted({p.round for p in self.passes if not p.paired})
        return [by_round["gateway", r] / by_round["direct", r] for r in rounds]

    def paired_ttft_ms(self, side: str) -> list[float]:
        return [t for p in self.passes if p.paired and p.side == side for t in p.ttft_ms]

    @property
    def added_ttft_ms(self) -> list[float]:
        """Each pair's gateway minus direct TTFT (same engine step for both, nearly always)."""
        return [gateway - direct for direct, gateway in self.pairs]

    @property
    def added_ttft_p50_ms(self) -> float:
        """The median pair's difference: what the gateway adds to the first token."""
        return percentile(self.added_ttft_ms, 0.5)

    @property
    def added_ttft_p50_interval_ms(self) -> tuple[float, float]:
        """A 95% bootstrap interval around added_ttft_p50_ms (seeded: the same every run)."""
        added = self.added_ttft_ms
        rng = random.Random(self.options.seed)
        draws = sorted(
            percentile(rng.choices(added, k=len(added)), 0.5)
            for _ in range(BOOTSTRAP_DRAWS if added else 0)
        )
        if not draws:
            return float("nan"), float("nan")
        return draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]

    @property
    def added_ttft_p99_ms(self) -> float:
        """Gateway minus direct TTFT p99 over the paired passes."""
        gateway, direct = self.paired_ttft_ms("gateway"), self.paired_ttft_ms("direct")
        return percentile(gateway, 0.99) - percentile(direct, 0.99)

    @property
    def separate_added_ttft_p50_ms(self) -> float:
        """The same difference between the passes alone: swings with each pass's luck."""
        return self.gateway.ttft_p50_ms - self.direct.ttft_p50_ms

    @property
    def gateway_cpu_ms_per_1k_tokens(self) -> float:
        mine = [p for p in self.passes if p.side == "gateway" and not p.paired]
        tokens = sum(p.tokens for p in mine)
        return 1e6 * sum(p.gateway_cpu_s for p in mine) / tokens if tokens else float("nan")

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.passes)


@dataclass(frozen=True, slots=True)
class Target:
    side: str
    url: str
    headers: dict[str, str]


def order(round_no: int, direct: Target, via: Target) -> tuple[Target, Target]:
    """The two passes alone of round `round_no` (from 1): direct first in odd rounds, the
    gateway first in even ones, so over two rounds each side runs once first and once second."""
    return (direct, via) if round_no % 2 == 1 else (via, direct)


def lengths(options: Options) -> list[int]:
    """Each request's max_tokens in a pass: `max_tokens` ± up to half of it, in pairs that
    sum to twice it (so every pass asks for exactly requests * max_tokens), seeded order."""
    rng = random.Random(options.seed)
    mean, total = options.max_tokens, options.streams * options.waves
    spread = mean // 2
    out = [mean] * (total % 2)
    for _ in range(total // 2):
        d = rng.randint(0, spread)
        out += [mean + d, mean - d]
    rng.shuffle(out)
    return out


def payload(max_tokens: int, ignore_eos: bool, every_frame: bool = False) -> bytes:
    """A streamed chat completion; `every_frame`: with vLLM's usage in every frame (what the
    gateway asks of it for every stream, `continuous_usage_stats`)."""
    body: dict[str, object] = {
        "model": CHAT_MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}
        if every_frame
        else {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return orjson.dumps(body)


async def stream_to(http: aiohttp.ClientSession, target: Target, body: bytes) -> Streamed:
    """One streaming chat completion to `target`, read to its end."""
    headers = {"content-type": "application/json", **target.headers}
    return await stream_chat(http, f"{target.url}/v1/chat/completions", body, headers)


async def run_pass(
    http: aiohttp.ClientSession, target: Target, bodies: list[bytes], concurrency: int
) -> tuple[list[Streamed], float]:
    """Every body once to `target`, `concurrency` in flight: the outcomes and the wall time."""
    outcomes: list[Streamed] = []
    queue = list(reversed(bodies))

    async def client() -> None:
        while queue:
            outcomes.append(await stream_to(http, target, queue.pop()))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


async def run_pairs(
    http: aiohttp.ClientSession,
    direct: Target,
    via: Target,
    bodies: list[tuple[bytes, bytes]],
    pairs: int,
) -> tuple[list[tuple[Streamed, Streamed]], float]:
    """Every (direct, gateway) pair of bodies to both sides at the same moment, `pairs` pairs
    in flight; which side's request is sent first alternates. The (direct, gateway) outcomes
    and the wall time."""
    outcomes: list[tuple[Streamed, Streamed]] = []
    queue = list(reversed(bodies))

    async def client(i: int) -> None:
        k = i
        while queue:
            to_direct, to_via = queue.pop()
            direct_first = k % 2 == 0
            k += 1
            sends = [stream_to(http, direct, to_direct), stream_to(http, via, to_via)]
            a, b = await asyncio.gather(*(sends if direct_first else reversed(sends)))
            outcomes.append((a, b) if direct_first else (b, a))

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(max(1, pairs))))
    return outcomes, time.perf_counter() - started


def summarise(
    side: str,
    round_no: int,
    mine: list[Streamed],
    seconds: float,
    cpu_s: float,
    *,
    paired: bool = False,
) -> Pass:
    good = [o for o in mine if o.ok]
    tokens = sum(o.completion_tokens or o.content_frames for o in good)
    ttft = [o.ttft_ms for o in good if o.ttft_ms is not None]
    errors = len(mine) - len(good)
    return Pass(side, round_no, len(good), errors, tokens, seconds, ttft, cpu_s, paired)


async def accepts_ignore_eos(http: aiohttp.ClientSession, engine: str) -> bool:
    """Whether this vLLM takes `ignore_eos` (a vLLM sampling extra, not OpenAI's)."""
    body: dict[str, object] = {"model": CHAT_MODEL_NAME, "max_tokens": 2, "ignore_eos": True}
    body["messages"] = [{"role": "user", "content": "hi"}]
    async with http.post(f"{engine}/v1/chat/completions", json=body) as resp:
        return resp.status == 200


@asynccontextmanager
async def chat_engine(url: str | None, tmp: Path) -> AsyncIterator[str]:
    """`url` if given, else a new engine with the bundled chat model (stopped on exit)."""
    if url is not None:
        yield url.rstrip("/")
        return
    ready = await prepare(EmbeddedPaths.resolve())
    spec = EngineSpec(
        ready.engine_python, ready.chat_model, CHAT_MODEL_NAME, free_port(), tmp / "engine.log"
    )
    async with running_engine(spec) as engine:
        yield engine


@asynccontextmanager
async def engine_and_gateway(
    tmp: Path, engine_url: str | None = None
) -> AsyncIterator[tuple[Target, Target, Server]]:
    """The engine and a gateway with limits, a key and the ledger in front of it."""
    async with chat_engine(engine_url, tmp) as engine, auth_mode("limits", tmp) as auth:
        config = (
            f"access_log: false\nlog_level: warning\n{auth.config}"
            f"metering:\n  spill_dir: {tmp / 'spill'}\n"
            f"models:\n  - name: {CHAT_MODEL_NAME}\n    engines: [{engine}]\n"
        )
        async with gateway(config, tmp) as gw:
            headers = await auth.headers(gw.url)
            yield Target("direct", engine, {}), Target("gateway", gw.url, headers), gw


async def measure(options: Options) -> Figures:
    """Start the engine and the gateway, warm both paths, then run the rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            engine_and_gateway(Path(tmp), options.engine) as (direct, via, gw),
            aiohttp.ClientSession(
                # Under vLLM's (uvicorn's) 5 s, so no kept connection is reused as it closes.
                connector=aiohttp.TCPConnector(limit=max(2, options.streams), keepalive_timeout=4),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            ) as http,
        ):
            ignore_eos = await accepts_ignore_eos(http, direct.url)
            warm = [payload(WARM_TOKENS, ignore_eos)] * options.streams
            for target in (direct, via):
                outcomes, _ = await run_pass(http, target, warm, options.streams)
                bad = [o for o in outcomes if not o.ok]
                if bad:
                    raise RuntimeError(f"warm-up failed at {target.url}: {bad[0]}")
            tokens = lengths(options)
            bodies = {
                "direct": [payload(n, ignore_eos, options.direct_usage) for n in tokens],
                "gateway": [payload(n, ignore_eos) for n in tokens],
            }
            passes: list[Pass] = []
            pairs: list[tuple[float, float]] = []

            async def alone(target: Target, round_no: int) -> None:
                cpu = gw.cpu_seconds()
                outcomes, seconds = await run_pass(
                    http, target, bodies[target.side], options.streams
                )
                cpu = gw.cpu_seconds() - cpu
                passes.append(summarise(target.side, round_no, outcomes, seconds, cpu))

            async def paired(round_no: int) -> None:
                cpu = gw.cpu_seconds()
                both, seconds = await run_pairs(
                    http,
                    direct,
                    via,
                    list(zip(bodies["direct"], bodies["gateway"], strict=True)),
                    options.streams // 2,
                )
                cpu = gw.cpu_seconds() - cpu
                for target, mine in ((direct, [d for d, _ in both]), (via, [g for _, g in both])):
                    passes.append(summarise(target.side, round_no, mine, seconds, cpu, paired=True))
                pairs.extend(
                    (d.ttft_ms, g.ttft_ms)
                    for d, g in both
                    if d.ok and g.ok and d.ttft_ms is not None and g.ttft_ms is not None
                )

            for round_no in range(1, options.rounds + 1):
                for target in order(round_no, direct, via):
                    await alone(target, round_no)
                await paired(round_no)
    sides = Side.of("direct", passes), Side.of("gateway", passes)
    return Figures(options, ignore_eos, passes, *sides, pairs)


def render(figures: Figures) -> str:
    o = figures.options
    low, high = figures.added_ttft_p50_interval_ms
    lines = [
        f"streams in flight: {o.streams}  max_tokens: {o.max_tokens} (mean; ±{o.max_tokens // 2})"
        f"  waves: {o.waves}  rounds: {o.rounds}  seed: {o.seed}  "
        f"ignore_eos: {str(figures.ignore_eos).lower()}"
        + ("  direct asks for usage in every frame" if o.direct_usage else ""),
        f"{'side':<8} {'round':>5} {'pass':>6} {'streams':>7} {'errors':>6} {'tokens':>7} "
        f"{'seconds':>8} {'tokens/s':>9} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} "
        f"{'gw CPU ms':>9}",
    ]
    for p in figures.passes:
        rate = "-" if p.paired else f"{p.tokens_per_s:.1f}"
        lines.append(
            f"{p.side:<8} {p.round:>5} {PAIRED if p.paired else 'alone':>6} {p.streams:>7} "
            f"{p.errors:>6} {p.tokens:>7} {p.seconds:>8.2f} {rate:>9} "
            f"{percentile(p.ttft_ms, 0.5):>11.1f} {percentile(p.ttft_ms, 0.99):>11.1f} "
            f"{p.gateway_cpu_s * 1000:>9.1f}"
        )
    for s in (figures.direct, figures.gateway):
        lines.append(
            f"{s.side:<8} {'all':>5} {'alone':>6} {s.streams:>7} {s.errors:>6} {s.tokens:>7} "
            f"{s.seconds:>8.2f} {s.tokens_per_s:>9.1f} {s.ttft_p50_ms:>11.1f} "
            f"{s.ttft_p99_ms:>11.1f}"
        )
    for side in SIDES:
        ttft = figures.paired_ttft_ms(side)
        lines.append(
            f"{side:<8} {'all':>5} {PAIRED:>6} {len(ttft):>7} {'':>6} {'':>7} {'':>8} {'':>9} "
            f"{percentile(ttft, 0.5):>11.1f} {percentile(ttft, 0.99):>11.1f}"
        )
    lines += [
        f"tokens/s ratio (gateway/direct): {figures.throughput_ratio:.3f}",
        f"tokens/s ratio per round: {' '.join(f'{r:.3f}' for r in figures.round_ratios)}",
        f"gateway CPU ms per 1k tokens: {figures.gateway_cpu_ms_per_1k_tokens:.1f}",
        f"pairs both sides served: {len(figures.pairs)}",
        f"added TTFT p50 ms: {figures.added_ttft_p50_ms:.2f}",
        f"added TTFT p50 ms, 95% interval: {low:.2f} {high:.2f}",
        f"added TTFT p99 ms: {figures.added_ttft_p99_ms:.1f}",
        f"added TTFT p50 ms between passes alone: {figures.separate_added_ttft_p50_ms:.1f}",
        f"errors: {figures.errors}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=32, help="streams in flight")
    parser.add_argument("--max-tokens", type=int, default=64, help="mean tokens per stream")
    parser.add_argument("--rounds", type=int, default=2, help="direct+gateway rounds")
    parser.add_argument("--waves", type=int, default=3, help="requests per pass / streams")
    parser.add_argument("--seed", type=int, default=0, help="the lengths' and bootstrap's seed")
    parser.add_argument(
        "--direct-usage",
        action="store_true",
        help="the direct side asks vLLM for usage in every frame too, as the gateway does",
    )
    parser.add_argument(
        "--engine",
        metavar="URL",
        help="an engine already serving the bundled chat model (default: start one)",
    )
    args = parser.parse_args()
    options = Options(
        args.streams,
        args.max_tokens,
        args.rounds,
        args.waves,
        args.seed,
        args.engine,
        args.direct_usage,
    )
    print(render(asyncio.run(measure(options))), flush=True)


if __name__ == "__main__":
    main()
