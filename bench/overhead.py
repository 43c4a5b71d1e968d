"""Gateway overhead: the same load straight to a zero-delay simulator and through the gateway.

Prints requests/s and the latency the gateway adds (p50, p99) for non-streaming and streaming
chat completions at concurrency 1, 16 and 64, and the gateway process's CPU time and read and
write system calls per request (exact, where CPU time is noisy).
Figures are ratios and differences measured in the same run, on the same machine, so a noisy
machine shifts both sides alike; CPU per request is the steadiest figure of all.

    .venv/bin/python -m bench.overhead [--requests 2000] [--access-log] [--auth none|key|jwt|limits]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.auth_modes import AuthMode, auth_mode
from bench.harness import Call, Result, Server, drive, gateway, simulator

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}


def chat_call(base: str, stream: bool, auth: dict[str, str] | None = None) -> Call:
    url = f"{base}/v1/chat/completions"
    payload = orjson.dumps({**BODY, "stream": stream})
    headers = {"content-type": "application/json", **(auth or {})}

    async def call(session: aiohttp.ClientSession) -> None:
        async with session.post(url, data=payload, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200 or (stream and not body.endswith(b"data: [DONE]\n\n")):
                raise RuntimeError(f"bad answer {resp.status}: {body[:200]!r}")

    return call


@dataclass(frozen=True, slots=True)
class Cost:
    """The gateway process's share per request."""

    cpu_us: float
    reads: float  # read system calls
    writes: float  # write system calls


async def measure(
    direct: str, via: Server, stream: bool, concurrency: int, total: int, *, auth: dict[str, str]
) -> tuple[Result, Result, Cost]:
    """Direct and gateway results, and the gateway's cost per request."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    direct_call, via_call = chat_call(direct, stream), chat_call(via.url, stream, auth)
    async with aiohttp.ClientSession(connector=connector) as session:
        for call in (direct_call, via_call):  # warm both paths (connections, caches)
            await drive(session, call, min(total, 200), concurrency)
        direct_result = await drive(session, direct_call, total, concurrency)
        cpu_before, (reads, writes) = via.cpu_seconds(), via.syscalls()
        via_result = await drive(session, via_call, total, concurrency)
        cpu_us = (via.cpu_seconds() - cpu_before) / total * 1e6
        reads_after, writes_after = via.syscalls()
    cost = Cost(cpu_us, (reads_after - reads) / total, (writes_after - writes) / total)
    return direct_result, via_result, cost


def config_for(sim_url: str, access_log: bool, auth: AuthMode) -> str:
    return (
        f"access_log: {str(access_log).lower()}\nlog_level: warning\n{auth.config}"
        f"models:\n  - name: {MODEL}\n    engines: [{sim_url}]\n"
    )


async def main(total: int, access_log: bool, levels: list[int], auth_name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            auth_mode(auth_name, Path(tmp)) as auth,
            simulator(MODEL) as sim,
            gateway(config_for(sim, access_log, auth), Path(tmp)) as gw,
        ):
            credentials = await auth.headers(gw.url)
            print(f"auth: {auth_name}")
            print(
                f"{'mode':<10} {'conc':>4} {'direct rps':>10} {'gw rps':>8} {'ratio':>6} "
                f"{'direct p50':>10} {'gw p50':>8} {'added p50':>9} {'added p99':>9}  (ms) "
                f"{'gw CPU/req':>10} (µs) {'gw reads/req':>12} {'gw writes/req':>13}"
            )
            for stream in (False, True):
                for conc in levels:
                    d, g, cost = await measure(sim, gw, stream, conc, total, auth=credentials)
                    print(
                        f"{'stream' if stream else 'non-stream':<10} {conc:>4} {d.rps:>10.0f} "
                        f"{g.rps:>8.0f} {g.rps / d.rps:>6.2f} {d.p50:>10.3f} {g.p50:>8.3f} "
                        f"{g.p50 - d.p50:>9.3f} {g.pct(0.99) - d.pct(0.99):>9.3f}       "
                        f"{cost.cpu_us:>10.0f}      {cost.reads:>12.2f} {cost.writes:>13.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--access-log", action="store_true", help="gateway writes access logs")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--auth", choices=["none", "key", "jwt", "limits"], default="none")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    asyncio.run(main(args.requests, args.access_log, levels, args.auth))
