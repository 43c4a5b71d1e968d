"""Soak: steady mixed load through the gateway with everything on, watching for leaks.

    .venv/bin/python -m bench.soak [--seconds 1200] [--concurrency 16] [--sample-every 30]
                                   [--warmup 30] [--itl-ms 1]

The gateway (one process) with Redis, an API key with rpm, tpm and concurrency limits far too
high to refuse, and the usage ledger, in front of the simulator (a small per-token delay, so
streams last a while). `--concurrency` clients keep sending, in a fixed cycle of ten:
five non-streaming requests, four streams read to `[DONE]`, and one stream dropped by the
client after its second content frame. After `--warmup` seconds, then every `--sample-every`
seconds, and once more after the load stops and a settle pause, the gateway's resident memory
(VmRSS) and open file descriptors are sampled. At the end, the concurrency leases still held in
Redis (members of the `llmaas:{t:…}:leases` sorted sets, key and tenant scope) and the
gateway's in-flight gauge: both should be 0 once every request has been settled.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.auth_modes import ADMIN_TOKEN, PEPPER, AuthMode
from bench.harness import Server, gateway, simulator, stream_chat
from gateway.embedded.redis_server import running_redis

MODEL = "soak-model"
CYCLE = ("plain",) * 5 + ("stream",) * 4 + ("hang-up",)
HANG_UP_AFTER = 2  # content frames read before the client goes away
STREAM_TOKENS = 32
PLAIN_TOKENS = 16
INFLIGHT = re.compile(rb"^llmaas_inflight_requests\{[^}]*\} ([0-9.e+-]+)$", re.M)


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float = 1200.0
    concurrency: int = 16
    sample_every: float = 30.0
    warmup: float = 30.0
    settle: float = 3.0
    itl_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # since the load started
    rss_kib: int
    fds: int


@dataclass(slots=True)
class Tally:
    done: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.examples) < 5:
            self.examples.append(why)


@dataclass(frozen=True, slots=True)
class Figures:
    options: Options
    load_seconds: float
    done: dict[str, int]
    errors: int
    error_examples: list[str]
    samples: list[Sample]
    leases: int
    inflight: float

    @property
    def requests(self) -> int:
        return sum(self.done.values())

    @property
    def rps(self) -> float:
        return self.requests / self.load_seconds

    @property
    def rss_peak_kib(self) -> int:
        return max(s.rss_kib for s in self.samples)

    @property
    def rss_growth_pct(self) -> float:
        start, end = self.samples[0].rss_kib, self.samples[-1].rss_kib
        return (end - start) / start * 100

    @property
    def fds_growth(self) -> int:
        return self.samples[-1].fds - self.samples[0].fds


class Load:
    """The clients: each takes the next kind of request from the cycle until told to stop."""

    def __init__(self, http: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> None:
        self.http = http
        self.url = f"{base}/v1/chat/completions"
        self.headers = {"content-type": "application/json", **auth}
        self.tally = Tally()
        self.sent = 0
        self.stopping = asyncio.Event()
        messages = [{"role": "user", "content": "Tell me about soaking tests."}]
        body = {"model": MODEL, "messages": messages}
        self.plain = orjson.dumps({**body, "max_tokens": PLAIN_TOKENS})
        self.stream = orjson.dumps({**body, "max_tokens": STREAM_TOKENS, "stream": True})

    async def client(self) -> None:
        while not self.stopping.is_set():
            kind = CYCLE[self.sent % len(CYCLE)]
            self.sent += 1
            try:
                why = await self.one(kind)
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                why = f"{kind}: {type(exc).__name__}: {exc}"
            if why is None:
                self.tally.done[kind] += 1
            else:
                self.tally.fail(why)

    async def one(self, kind: str) -> str | None:
        """None when the request went as planned, else what went wrong."""
        if kind == "plain":
            async with self.http.post(self.url, data=self.plain, headers=self.headers) as resp:
                body = await resp.read()
                ok = resp.status == 200 and b'"choices"' in body
                return None if ok else f"plain: {resp.status} {body[:200]!r}"
        hang_up = HANG_UP_AFTER if kind == "hang-up" else None
        got = await stream_chat(
            self.http, self.url, self.stream, self.headers, hang_up_after=hang_up
        )
        planned = got.content_frames == HANG_UP_AFTER if hang_up else got.ok
        return None if planned and got.error is None else f"{kind}: {got}"


def sample(gw: Server, started: float) -> Sample:
    return Sample(time.monotonic() - started, gw.rss_kib(), gw.open_fds())


async def leases_held(redis_url: str) -> int:
    """Members of every concurrency-lease set (key and tenant scope) left in Redis."""
    redis = Redis.from_url(redis_url)
    try:
        held = 0
        async for key in redis.scan_iter(match="llmaas:{t:*:leases", count=1000):
            held += await redis.zcard(key)
        return held
    finally:
        await redis.aclose()


async def inflight(http: aiohttp.ClientSession, base: str) -> float:
    """The gateway's own count of requests in flight (/metrics takes the admin token)."""
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(f"{base}/metrics", headers=admin) as resp:
        text = await resp.read()
    values = INFLIGHT.findall(text)
    if resp.status != 200 or not values:
        raise RuntimeError(f"no llmaas_inflight_requests in /metrics ({resp.status})")
    return sum(float(v) for v in values)


async def run_load(
    load: Load, gw: Server, options: Options, started: float
) -> tuple[list[Sample], float]:
    """Keep the load on for `options.seconds` from `started`, sampling the gateway; returns the
    samples taken under load and the load's duration."""
    clients = [asyncio.create_task(load.client()) for _ in range(options.concurrency)]
    samples: list[Sample] = []
    try:
        await asyncio.sleep(min(options.warmup, options.seconds))
        samples.append(sample(gw, started))
        end = started + options.seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(options.sample_every, left))
            samples.append(sample(gw, started))
    finally:
        load.stopping.set()
        await asyncio.gather(*clients)
    return samples, time.monotonic() - started


def config(redis_url: str, sim: str, tmp: Path) -> str:
    return (
        f"access_log: false\nlog_level: warning\nadmin_token: {ADMIN_TOKEN}\n"
        f"redis_url: {redis_url}\nkey_pepper: {PEPPER}\n"
        f"metering:\n  spill_dir: {tmp / 'spill'}\n"
        f"models:\n  - name: {MODEL}\n    engines: [{sim}]\n"
    )


async def soak(options: Options) -> Figures:
    """Run the soak and return its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            running_redis(None) as redis_url,
            simulator(MODEL, f"--itl-ms={options.itl_ms}") as sim,
        ):
            auth = AuthMode(config(redis_url, sim, Path(tmp)), None, limited=True)
            async with (
                gateway(auth.config, Path(tmp)) as gw,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=options.concurrency),
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as http,
            ):
                load = Load(http, gw.url, await auth.headers(gw.url))
                started = time.monotonic()
                samples, seconds = await run_load(load, gw, options, started)
                await asyncio.sleep(options.settle)
                samples.append(sample(gw, started))
                gauge = await inflight(http, gw.url)
                held = await leases_held(redis_url)
    tally = load.tally
    return Figures(
        options, seconds, dict(tally.done), tally.errors, tally.examples, samples, held, gauge
    )


def render(f: Figures) -> str:
    first, last = f.samples[0], f.samples[-1]
    lines = [
        f"load seconds: {f.load_seconds:.0f}  concurrency: {f.options.concurrency}  "
        f"simulator itl ms: {f.options.itl_ms}",
        f"{'at s':>7} {'RSS KiB':>9} {'fds':>5}",
        *(f"{s.at_s:>7.0f} {s.rss_kib:>9} {s.fds:>5}" for s in f.samples),
        f"requests done: {f.requests}",
        *(f"  {kind}: {f.done.get(kind, 0)}" for kind in dict.fromkeys(CYCLE)),
        f"errors: {f.errors}",
        *(f"  {why}" for why in f.error_examples),
        f"rps: {f.rps:.1f}",
        f"RSS KiB start/end/peak: {first.rss_kib}/{last.rss_kib}/{f.rss_peak_kib}",
        f"RSS growth %: {f.rss_growth_pct:.1f}",
        f"fds start/end: {first.fds}/{last.fds}",
        f"fds growth: {f.fds_growth}",
        f"leases held: {f.leases}",
        f"in flight: {f.inflight:g}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1200.0, help="how long the load runs")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in flight")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the first one")
    parser.add_argument("--settle", type=float, default=3.0, help="pause before the last sample")
    parser.add_argument("--itl-ms", type=float, default=1.0, help="simulator's per-token delay")
    args = parser.parse_args()
    options = Options(
        args.seconds, args.concurrency, args.sample_every, args.warmup, args.settle, args.itl_ms
    )
    print(render(asyncio.run(soak(options))), flush=True)


if __name__ == "__main__":
    main()
