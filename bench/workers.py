"""The gateway with everything on at `gateway serve --workers 1` and `--workers 2`: what a
second worker buys on this box, and who used the cores.

Everything on as production runs it: a real API key with rpm, tpm and concurrency limits (far too
high to refuse), Redis, the metering ledger and the access log. Non-streaming chat completions at
concurrency 16 and 64 against a zero-delay simulator. Besides requests/s and p50/p99, the CPU
each party used over the measured run, as cores (CPU seconds / wall seconds) and per request:
the gateway (supervisor and workers), the simulator, Redis, and this process (the load
generator) — on a 2-core box they compete, so a gateway that cannot get a core shows it here.

    .venv/bin/python -m bench.workers [--requests 4000] [--workers 1,2] [--concurrency 16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.auth_modes import auth_mode
from bench.harness import (
    Server,
    drive,
    gateway,
    machine_busy_seconds,
    process_tree,
    redis_pid,
    simulator_server,
    tree_cpu_seconds,
)
from bench.overhead import MODEL, config_for
from bench.side_by_side import counted_call, warmup


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds one party used over a measured run."""

    gateway: float
    simulator: float
    redis: float
    load_generator: float
    machine: float  # every process on the box (from /proc/stat), the above included

    @property
    def others(self) -> float:
        """What the rest of the box used: other people's work competing for the same cores."""
        ours = self.gateway + self.simulator + self.redis + self.load_generator
        return max(0.0, self.machine - ours)


@dataclass(frozen=True, slots=True)
class WorkersCell:
    workers: int
    processes: int  # the gateway's process tree: a supervisor and its workers
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu: CpuUse
    first_error: str | None = None  # what the first bad answer said, to tell why

    def cores(self, seconds: float) -> float:
        """CPU seconds over wall seconds: 1.0 is one core busy all the run."""
        return seconds / self.seconds

    @property
    def gateway_us_per_request(self) -> float:
        return self.cpu.gateway / self.requests * 1e6

    @property
    def rps_per_gateway_core(self) -> float:
        return self.requests / self.cpu.gateway if self.cpu.gateway else 0.0


@dataclass(frozen=True, slots=True)
class Parties:
    gateway: Server
    simulator: Server
    redis_pid: int  # the Redis behind the gateway

    def sample(self) -> CpuUse:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return CpuUse(
            gateway=tree_cpu_seconds(self.gateway.pid),
            simulator=tree_cpu_seconds(self.simulator.pid),
            redis=tree_cpu_seconds(self.redis_pid),
            load_generator=own.ru_utime + own.ru_stime,
            machine=machine_busy_seconds(),
        )


def _spent(before: CpuUse, after: CpuUse) -> CpuUse:
    return CpuUse(
        gateway=after.gateway - before.gateway,
        simulator=after.simulator - before.simulator,
        redis=after.redis - before.redis,
        load_generator=after.load_generator - before.load_generator,
        machine=after.machine - before.machine,
    )


async def measure(
    parties: Parties, headers: dict[str, str], workers: int, concurrency: int, requests: int
) -> WorkersCell:
    errors: list[str] = []
    call = counted_call(parties.gateway.url, False, headers, errors)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await drive(session, call, warmup(requests), concurrency)
        errors.clear()
        before, started = parties.sample(), time.perf_counter()
        result = await drive(session, call, requests, concurrency)
        after, seconds = parties.sample(), time.perf_counter() - started
    return WorkersCell(
        workers=workers,
        processes=len(process_tree(parties.gateway.pid)),
        concurrency=concurrency,
        requests=requests,
        errors=len(errors),
        seconds=seconds,
        rps=result.rps,
        p50_ms=result.p50,
        p99_ms=result.pct(0.99),
        cpu=_spent(before, after),
        first_error=errors[0] if errors else None,
    )


async def run(
    requests: int = 4000,
    *,
    workers: tuple[int, ...] = (1, 2),
    levels: tuple[int, ...] = (16, 64),
    report: Callable[[WorkersCell], None] | None = None,
) -> list[WorkersCell]:
    """Each worker count in turn (its own gateway and Redis), every concurrency level."""
    cells: list[WorkersCell] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with simulator_server(MODEL) as sim:
            for count in workers:
                async with (
                    auth_mode("limits", Path(tmp)) as auth,
                    gateway(
                        config_for(sim.url, True, auth), Path(tmp), ["--workers", str(count)]
                    ) as gw,
                ):
                    headers = await auth.headers(gw.url)
                    assert auth.redis_url is not None  # the "limits" mode has a Redis
                    parties = Parties(gw, sim, await redis_pid(auth.redis_url))
                    for conc in levels:
                        cells.append(await measure(parties, headers, count, conc, requests))
                        if report is not None:
                            report(cells[-1])
    return cells


HEADER = (
    "| workers | processes | conc | requests | errors | rps | p50 ms | p99 ms | gateway cores "
    "| gateway µs/req | simulator cores | Redis cores | load generator cores | others cores "
    "| rps per gateway core |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | ---: | ---: | ---: | ---: |"
)


def row(c: WorkersCell) -> str:
    return (
        f"| {c.workers} | {c.processes} | {c.concurrency} | {c.requests} | {c.errors} "
        f"| {c.rps:.0f} | {c.p50_ms:.3f} | {c.p99_ms:.3f} | {c.cores(c.cpu.gateway):.2f} "
        f"| {c.gateway_us_per_request:.0f} | {c.cores(c.cpu.simulator):.2f} "
        f"| {c.cores(c.cpu.redis):.2f} | {c.cores(c.cpu.load_generator):.2f} "
        f"| {c.cores(c.cpu.others):.2f} | {c.rps_per_gateway_core:.0f} |"
    )


def sizing(cells: list[WorkersCell]) -> str:
    """One sentence an operator can size by: requests/s per gateway core, everything on."""
    per_core = sorted(c.rps_per_gateway_core for c in cells)
    best = max(cells, key=lambda c: c.rps)
    return (
        f"sizing: one gateway core serves {per_core[0]:.0f}-{per_core[-1]:.0f} requests/s "
        f"(everything on, non-streaming, zero-delay engine); the most here was {best.rps:.0f} "
        f"requests/s at --workers {best.workers}, concurrency {best.concurrency}, with the gateway "
        f"using {best.cores(best.cpu.gateway):.2f} of this box's {os.cpu_count()} cores"
    )


def print_row(c: WorkersCell) -> None:
    print(row(c), flush=True)
    if c.first_error is not None:
        print(f"workers {c.workers} conc {c.concurrency}: {c.first_error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="per cell")
    parser.add_argument("--workers", default="1,2", help="gateway worker counts, in turn")
    parser.add_argument("--concurrency", default="16,64")
    args = parser.parse_args()
    counts = tuple(int(w) for w in args.workers.split(","))
    levels = tuple(int(c) for c in args.concurrency.split(","))
    print(f"requests per cell: {args.requests}; cores on this machine: {os.cpu_count()}")
    print(HEADER, flush=True)
    cells = asyncio.run(run(args.requests, workers=counts, levels=levels, report=print_row))
    print()
    print(sizing(cells))
    print(f"errors: {sum(c.errors for c in cells)}")


if __name__ == "__main__":
    main()
