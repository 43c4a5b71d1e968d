"""Routing strategies on real engines: TTFT, vLLM's prefix-cache hit rate and the load spread.

python -m bench.routing [--strategies round_robin,least_loaded,prefix_affinity] [--seed 7]
                        [--rounds 3] [--engine-args "--long-prefill-token-threshold 256"]
python -m bench.routing --decision-only      # the cost of one routing decision, no engines

Two vLLM CPU engines (the bundled SmolLM2-135M, prefix caching on: vLLM's default), one core
each, are started one after the other; for each strategy a fresh gateway is started in front of
them, and their prefix caches are emptied first (`POST /reset_prefix_cache`, a vLLM dev
endpoint, hence VLLM_SERVER_DEV_MODE=1). The workload: 24 system prompts of ~1k tokens (more
than one engine's KV cache holds), 3 conversations per prompt, 4 turns each in a row (earlier
answers are fixed text, so every strategy gets the same prompts), `--concurrency` users taking
conversations in a seeded random order. Streams; TTFT is the time to the first content frame.
With --rounds N the strategies run in turn N times on the same engines, and the summary gives
each strategy's median p90 and the median of the per-round p90 ratios (a p90 over 288 requests
on a shared box moves by a third between runs; a ratio within one round is steadier).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

from gateway.app import create_app
from gateway.draining_server import started
from gateway.embedded.engine import EngineSpec, running_engine
from gateway.embedded.paths import CHAT_MODEL_NAME, EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.netutil import free_port
from gateway.routing.balancer import (
    Balancer,
    LeastLoaded,
    PrefixAffinity,
    RoundRobin,
    affinity_key,
    block_hashes,
)
from gateway.routing.engines import Engine, EngineRegistry, ModelPool
from gateway.settings import Settings
from gateway.state import GatewayState

STRATEGIES = ("round_robin", "least_loaded", "prefix_affinity")
WORDS = [
    "cluster",
    "engine",
    "request",
    "token",
    "cache",
    "prefix",
    "tenant",
    "quota",
    "latency",
    "budget",
    "region",
    "replica",
    "policy",
    "invoice",
    "schedule",
    "batch",
    "window",
    "stream",
    "model",
    "adapter",
    "metric",
    "alert",
    "gateway",
    "limit",
    "account",
    "record",
    "export",
    "import",
    "driver",
    "kernel",
    "memory",
    "storage",
    "network",
    "service",
    "deploy",
]


@dataclass(frozen=True, slots=True)
class Workload:
    conversations: list[list[list[dict[str, str]]]]  # conversation → turn → messages

    @property
    def requests(self) -> int:
        return sum(len(c) for c in self.conversations)


def build_workload(seed: int, prompts: int, per_prompt: int, turns: int) -> Workload:
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    systems = [f"You are assistant {i} of the fleet team. {text(1000)}" for i in range(prompts)]
    conversations = []
    for system in systems:
        for _ in range(per_prompt):
            history = [{"role": "system", "content": system}]
            conversation = []
            for _ in range(turns):
                history = [*history, {"role": "user", "content": text(25)}]
                conversation.append(history)
                history = [*history, {"role": "assistant", "content": text(16)}]
            conversations.append(conversation)
    rng.shuffle(conversations)
    return Workload(conversations)


@dataclass(slots=True)
class Counters:
    requests: float
    hits: float
    queries: float


async def engine_counters(http: aiohttp.ClientSession, url: str) -> Counters:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    sums = {"vllm:request_success_total": 0.0, "vllm:prefix_cache_hits_total": 0.0}
    sums["vllm:prefix_cache_queries_total"] = 0.0
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit("}", 1)[-1].split()[0])
    return Counters(*sums.values())


async def reset_prefix_cache(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(50):
        async with http.post(f"{url}/reset_prefix_cache") as resp:
            if resp.status == 200 and (await resp.json()).get("success"):
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not reset its prefix cache (VLLM_SERVER_DEV_MODE=1?)")


async def ttft_ms(
    http: aiohttp.ClientSession, gateway: str, messages: list[Any], max_tokens: int
) -> float:
    body = {"model": CHAT_MODEL_NAME, "messages": messages, "max_tokens": max_tokens}
    body |= {"stream": True, "temperature": 0}
    started_at = time.perf_counter()
    first: float | None = None
    async with http.post(f"{gateway}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if first is None and line.startswith(b"data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
    assert first is not None, "no content frame"
    return (first - started_at) * 1000


@dataclass(frozen=True, slots=True)
class Sample:
    ttft_ms: float
    first: bool  # the first request sent with its system prompt: a cold prefill anywhere


async def drive(
    http: aiohttp.ClientSession, gateway: str, work: Workload, args: argparse.Namespace
) -> list[Sample]:
    queue = list(work.conversations)
    samples: list[Sample] = []
    sent: set[str] = set()

    async def user() -> None:
        while queue:
            for messages in queue.pop():
                system = messages[0]["content"]
                first = system not in sent
                sent.add(system)
                ttft = await ttft_ms(http, gateway, messages, args.max_tokens)
                samples.append(Sample(ttft, first))

    await asyncio.gather(*(user() for _ in range(args.concurrency)))
    return samples


@asynccontextmanager
async def gateway(
    engines: list[str], strategy: str, tmp: Path
) -> AsyncIterator[tuple[str, Balancer, EngineRegistry]]:
    settings = Settings.model_validate(
        {
            "models": [{"name": CHAT_MODEL_NAME, "engines": engines}],
            "routing": {"strategy": strategy},
            "admin_token": "bench-admin-token-0123456789",
            "auth": {"required": False},
            "log_level": "warning",
            "metering": {"spill_dir": str(tmp / "spill")},
            "upstream": {"max_connections": 100},
        }
    )
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    async with started(uvicorn.Server(config)):
        state: GatewayState = app.state.gateway
        yield f"http://127.0.0.1:{port}", state.proxy.balancer, state.registry


@dataclass(frozen=True, slots=True)
class Move:
    """A prefix_affinity decision that sent a request away from the engine holding more of it."""

    matched: list[float]  # share of the key each engine was sent before, engine order
    inflight: list[int]
    scraped: list[float]  # running + waiting at the last scrape
    kv: list[float]
    chosen: int

    def __str__(self) -> str:
        def show(values: list[float] | list[int]) -> str:
            return "/".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)

        return (
            f"matched {show(self.matched)}, in flight {show(self.inflight)}, scraped "
            f"{show(self.scraped)}, kv {show(self.kv)} -> engine {self.chosen}"
        )


def watch_moves(balancer: Balancer, engines: list[str]) -> list[Move]:
    """Record prefix_affinity's decisions that did not go to the best-matching engine."""
    moves: list[Move] = []
    if not isinstance(balancer, PrefixAffinity):
        return moves
    choose = balancer.choose

    def watched(pool: list[Engine], blocks: list[int], now: float) -> Engine:
        chosen = choose(pool, blocks, now)
        by_url = {e.url: e for e in pool}
        ordered = [by_url[u] for u in engines if u in by_url]
        matched = [balancer.matched(e, blocks) / len(blocks) for e in ordered]
        if matched[ordered.index(chosen)] < max(matched):
            moves.append(
                Move(
                    matched,
                    [e.inflight for e in ordered],
                    [e.load.running + e.load.waiting for e in ordered],
                    [e.load.kv_usage for e in ordered],
                    ordered.index(chosen),
                )
            )
        return chosen

    setattr(balancer, "choose", watched)  # noqa: B010 (an instance attribute shadows the method)
    return moves


def held_by_all(balancer: Balancer, engines: list[Engine], work: Workload) -> int:
    """System prompts that prefix_affinity has sent to every engine (each moved at least once
    off its first engine, by the load bound or by a queue that outweighed the match)."""
    if not isinstance(balancer, PrefixAffinity):
        return 0
    systems = {c[0][0]["content"] for c in work.conversations}
    held = 0
    for system in systems:
        messages = [{"role": "system", "content": system}]
        blocks = block_hashes(affinity_key("chat/completions", {"messages": messages}))
        held += all(balancer.matched(engine, blocks) == len(blocks) for engine in engines)
    return held


@dataclass(frozen=True, slots=True)
class Row:
    strategy: str
    samples: list[Sample]
    per_engine: list[float]
    hits: float
    queries: float
    seconds: float
    moved: int  # prefix_affinity: system prompts sent to both engines

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft_ms for s in self.samples]

    def pct(self, q: float, *, later_only: bool = False) -> float:
        """TTFT percentile; `later_only`: of the requests that were not their system prompt's
        first (those are a cold ~1k-token prefill whatever the strategy)."""
        ordered = sorted(s.ttft_ms for s in self.samples if not (later_only and s.first))
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def spread(self) -> float:
        return max(self.per_engine) / statistics.mean(self.per_engine)


async def run_strategy(
    http: aiohttp.ClientSession,
    engines: list[str],
    strategy: str,
    work: Workload,
    *,
    args: argparse.Namespace,
    tmp: Path,
) -> Row:
    for url in engines:
        await reset_prefix_cache(http, url)
    before = [await engine_counters(http, url) for url in engines]
    started_at = time.perf_counter()
    async with gateway(engines, strategy, tmp) as (url, balancer, registry):
        await asyncio.sleep(1.5)  # one scrape of the engines' load at least
        moves = watch_moves(balancer, engines)
        samples = await drive(http, url, work, args)
        moved = held_by_all(balancer, registry.engines(), work)
    for move in moves:
        print(f"  moved: {move}")
    firsts = sorted(s.ttft_ms for s in samples if s.first)
    later = sorted(s.ttft_ms for s in samples if not s.first)
    if firsts:
        slow = sum(t >= firsts[0] for t in later)
        print(
            f"  {strategy}: {len(firsts)} first requests of a system prompt, TTFT "
            f"{firsts[0]:.0f}-{firsts[-1]:.0f} ms (median {statistics.median(firsts):.0f}); "
            f"{slow} of {len(later)} later ones as slow as the fastest of those",
            flush=True,
        )
    seconds = time.perf_counter() - started_at
    after = [await engine_counters(http, url) for url in engines]
    per_engine = [a.requests - b.requests for a, b in zip(after, before, strict=True)]
    hits = sum(a.hits - b.hits for a, b in zip(after, before, strict=True))
    queries = sum(a.queries - b.queries for a, b in zip(after, before, strict=True))
    return Row(strategy, samples, per_engine, hits, queries, seconds, moved)


def print_rows(rows: list[Row], base: Row) -> None:
    """The table; `p90 gain` is the first strategy's p90 TTFT over each one's."""
    print(
        "| strategy | TTFT p50 ms | TTFT p90 ms | p90 gain | p90 of later turns ms "
        "| prefix-cache hits | prompt tokens | requests per engine | max/mean | prompts on both "
        "| seconds |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        per_engine = " / ".join(f"{n:.0f}" for n in r.per_engine)
        print(
            f"| {r.strategy} | {r.pct(0.5):.0f} | {r.pct(0.9):.0f} | "
            f"{base.pct(0.9) / r.pct(0.9):.2f}x | {r.pct(0.9, later_only=True):.0f} | "
            f"{r.hits / max(r.queries, 1):.1%} | "
            f"{r.queries / len(r.ttfts):.0f} | {per_engine} | {r.spread:.2f} | "
            f"{r.moved if r.strategy == 'prefix_affinity' else '-'} | {r.seconds:.0f} |",
            flush=True,
        )


def machine_note() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    top = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[:5]
    busiest = "; ".join(t.strip() for t in top)
    return f"load average {' '.join(load)}; busiest processes: {busiest}"


@asynccontextmanager
async def two_engines(extra_args: tuple[str, ...], tmp: Path) -> AsyncIterator[list[str]]:
    """Their logs in `tmp` (engine-0.log, engine-1.log)."""
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # for /reset_prefix_cache; reaches the engines only
    ready = await prepare(EmbeddedPaths.resolve())
    async with AsyncExitStack() as stack:
        engines = []
        for i in range(2):  # one after the other: two at once starve each other of CPU
            # One core each (like two GPU servers): vLLM's default binds every engine's
            # OpenMP threads to all cores, and two engines then spin against each other.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(i % (os.cpu_count() or 1))
            log = tmp / f"engine-{i}.log"
            spec = EngineSpec(
                ready.engine_python,
                ready.chat_model,
                CHAT_MODEL_NAME,
                free_port(),
                log,
                extra_args=extra_args,
            )
            engines.append(await stack.enter_async_context(running_engine(spec)))
        yield engines


async def bench(args: argparse.Namespace) -> None:
    work = build_workload(args.seed, args.prompts, args.per_prompt, args.turns)
    conversations = len(work.conversations)
    print(f"workload: {work.requests} requests, {conversations} conversations, seed {args.seed}")
    print(f"machine before the engines started: {machine_note()}", flush=True)
    extra_args = tuple(shlex.split(args.engine_args))
    print(f"engine options beyond the embedded engine's: {' '.join(extra_args) or 'none'}")
    strategies = args.strategies.split(",")
    rounds: list[list[Row]] = []
    timeout = aiohttp.ClientTimeout(total=300)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            two_engines(extra_args, Path(tmp)) as engines,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            for number in range(args.rounds):
                print(f"round {number + 1} of {args.rounds}", flush=True)
                rows: list[Row] = []
                for strategy in strategies:
                    rows.append(
                        await run_strategy(http, engines, strategy, work, args=args, tmp=Path(tmp))
                    )
                    print_rows(rows[-1:], base=rows[0])
                rounds.append(rows)
            print(f"machine after the run: {machine_note()}")
    for number, rows in enumerate(rounds, 1):
        print(f"round {number}:")
        print_rows(rows, base=rows[0])
    if len(rounds) > 1:
        print_summary(strategies, rounds)


def print_summary(strategies: list[str], rounds: list[list[Row]]) -> None:
    """Per strategy over the rounds: median p90, and the median of the per-round p90 ratios
    (first strategy's over this one's), with their range."""
    print(f"over {len(rounds)} rounds (median, and range in brackets):")
    print("| strategy | TTFT p90 ms | p90 gain | p90 of later turns ms | prefix-cache hits |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for i, strategy in enumerate(strategies):
        rows = [r[i] for r in rounds]
        gains = [r[0].pct(0.9) / r[i].pct(0.9) for r in rounds]
        p90s = [row.pct(0.9) for row in rows]
        later = statistics.median(row.pct(0.9, later_only=True) for row in rows)
        hits = statistics.median(row.hits / max(row.queries, 1) for row in rows)
        print(
            f"| {strategy} | {statistics.median(p90s):.0f} ({min(p90s):.0f}-{max(p90s):.0f}) | "
            f"{statistics.median(gains):.2f}x ({min(gains):.2f}-{max(gains):.2f}) | "
            f"{later:.0f} | {hits:.1%} |"
        )


def decision_cost() -> None:
    """µs per routing decision for a 1k-token system prompt plus a few turns (~8 KiB key)."""
    work = build_workload(7, 24, 3, 4)
    bodies = [{"messages": turn} for c in work.conversations for turn in c]
    keys = [affinity_key("chat/completions", body) for body in bodies]
    blocks = statistics.mean(len(block_hashes(k)) for k in keys)
    print(f"key: {statistics.mean(map(len, keys)):.0f} bytes, {blocks:.0f} blocks on average")
    t0 = time.perf_counter()
    for body in bodies * 20:
        affinity_key("chat/completions", body)
    print(f"affinity_key: {(time.perf_counter() - t0) / (len(bodies) * 20) * 1e6:.1f} µs")
    for n in (2, 8):
        for balancer in (RoundRobin(), LeastLoaded(), PrefixAffinity()):
            pool = ModelPool("m", [Engine(f"http://e{i}") for i in range(n)])
            for key in keys:  # warm: every prefix remembered somewhere
                balancer.candidates(pool, key)
            t0 = time.perf_counter()
            for key in keys * 20:
                balancer.candidates(pool, key)
            cost = (time.perf_counter() - t0) / (len(keys) * 20) * 1e6
            print(f"{n} engines, {type(balancer).__name__}: {cost:.1f} µs per decision")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--prompts", type=int, default=24, help="distinct system prompts (~1k tokens)"
    )
    parser.add_argument("--per-prompt", type=int, default=3, help="conversations per system prompt")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="run the strategies in turn N times")
    parser.add_argument(
        "--engine-args", default="", help="more vLLM server options for both engines (quoted)"
    )
    parser.add_argument("--decision-only", action="store_true")
    args = parser.parse_args()
    if args.decision_only:
        decision_cost()
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
