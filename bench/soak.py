"""Soak: steady mixed load through the gateway with everything on, watching for leaks.

    .venv/bin/python -m bench.soak [--seconds 1200] [--concurrency 16] [--sample-every 30]
                                   [--warmup 30] [--itl-ms 1]

The gateway (one process) with Redis, an API key with rpm, tpm and concurrency limits far too
high to refuse, and the usage ledger, in front of the simulator (a small per-token delay, so
streams last a while). `--concurrency` clients keep sending, in a fixed cycle of ten:
five non-streaming requests, four streams read to `[DONE]`, and one stream dropped by the client
after its second content frame. After `--warmup` seconds the load pauses, its clients' connections
closed, and after `--settle` seconds (7: longer than the engine's 5 s keep-alive, so that the
gateway's idle connections to it are closed too) the gateway is sampled at rest; then, the load
on again, every `--sample-every` seconds, and once more at rest after the load stops and the
same pause. A sample is the gateway's resident memory (VmRSS) and its open file descriptors,
these also by kind (connections from clients, to Redis, to the engine, pipes, files): a kind
whose count differs between the first and the last sample is printed, so that a descriptor more
names its cause. At the end, the concurrency leases still held in Redis (members of the
`llmaas:{t:…}:leases` sorted sets, key and tenant scope) and the gateway's in-flight gauge: both
should be 0 once every request has been settled.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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
    settle: float = 7.0  # longer than the engine's 5 s keep-alive: its connections close
    itl_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # since the load started
    rss_kib: int
    fds: int
    fd_kinds: Counter[str]  # the same descriptors by what they are (fd_kind)


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

    @property
    def fd_kinds_changed(self) -> dict[str, tuple[int, int]]:
        """The kinds of descriptor whose count differs between the first and last samples:
        where a descriptor more (or fewer) comes from."""
        first, last = self.samples[0].fd_kinds, self.samples[-1].fd_kinds
        kinds = sorted(set(first) | set(last))
        return {k: (first[k], last[k]) for k in kinds if first[k] != last[k]}


class Load:
    """The clients: each takes the next kind of request from the cycle until told to stop."""

    http: aiohttp.ClientSession  # a session of the current run of the load (_loaded_while)

    def __init__(self, base: str, auth: dict[str, str], concurrency: int) -> None:
        self.concurrency = concurrency
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
    targets = gw.fd_targets()
    port = urlsplit(gw.url).port
    kinds = Counter(fd_kind(target, port) for target in targets.values())
    return Sample(time.monotonic() - started, gw.rss_kib(), len(targets), kinds)


TCP = re.compile(r"^tcp (\S+):(\d+) -> (\S+:\d+) (\S+)$")


def fd_kind(target: str, own_port: int | None) -> str:
    """What a descriptor is, without what changes from one connection to the next (client
    ports, descriptor numbers, pipe inodes): `clients of :8000 ESTABLISHED`, `to
    127.0.0.1:6379 ESTABLISHED`, `pipe`, a file's path."""
    tcp = TCP.match(target)
    if tcp is None:
        return target.split(":[", 1)[0] if ":[" in target else target
    host, port, remote, state = tcp.groups()
    if state == "LISTEN":
        return f"listening on {host}:{port}"
    if int(port) == own_port:
        return f"clients of :{port} {state}"
    return f"to {remote} {state}"


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
    """Warm up for `options.warmup`, pause the load for `options.settle` and take the first
    sample at rest, then keep the load on until `options.seconds` from `started`, sampling the
    gateway; returns the samples and the load's duration. The first sample is taken at rest,
    as the last one is: under load the count of client connections moves by one or two as
    clients that hang up open new ones, which once read as a descriptor more at the end."""
    await _loaded_for(load, min(options.warmup, options.seconds))
    await asyncio.sleep(options.settle)
    samples = [sample(gw, started)]
    end = started + options.seconds
    paused = options.settle

    async def sampling() -> None:
        while (left := end + paused - time.monotonic()) > 0:
            await asyncio.sleep(min(options.sample_every, left))
            samples.append(sample(gw, started))

    await _loaded_while(load, sampling())
    return samples, time.monotonic() - started - paused


async def _loaded_for(load: Load, seconds: float) -> None:
    async def wait() -> None:
        await asyncio.sleep(seconds)

    await _loaded_while(load, wait())


async def _loaded_while(load: Load, work: Coroutine[None, None, None]) -> None:
    """Keep `load.concurrency` clients sending while `work` runs, then let each finish its
    request and close their connections, so that the gateway at rest holds none of them."""
    async with _session(load.concurrency) as load.http:
        load.stopping.clear()
        clients = [asyncio.create_task(load.client()) for _ in range(load.concurrency)]
        try:
            await work
        finally:
            load.stopping.set()
            await asyncio.gather(*clients)


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    )


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
            async with gateway(auth.config, Path(tmp)) as gw:
                load = Load(gw.url, await auth.headers(gw.url), options.concurrency)
                started = time.monotonic()
                samples, seconds = await run_load(load, gw, options, started)
                await asyncio.sleep(options.settle)
                samples.append(sample(gw, started))
                async with _session(1) as http:
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
        *(f"  fds {kind}: {start} -> {end}" for kind, (start, end) in f.fd_kinds_changed.items()),
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
    parser.add_argument(
        "--settle", type=float, default=7.0, help="pause before the first and the last sample"
    )
    parser.add_argument("--itl-ms", type=float, default=1.0, help="simulator's per-token delay")
    args = parser.parse_args()
    options = Options(
        args.seconds, args.concurrency, args.sample_every, args.warmup, args.settle, args.itl_ms
    )
    print(render(asyncio.run(soak(options))), flush=True)


if __name__ == "__main__":
    main()
