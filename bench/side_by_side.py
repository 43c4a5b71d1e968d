"""Side by side, in one run: the simulator direct, the gateway bare, the gateway with everything
on, and LiteLLM's proxy, all in front of the same zero-delay simulator.

- direct: the load straight to the simulator (the floor every proxy adds to).
- gateway bare: no auth, no Redis, no limits, no metering; the access log on, as shipped (so
  bare against all on is the cost of keys, limits and metering alone).
- gateway all on: how production runs it — a real API key with rpm, tpm and concurrency limits
  (far too high to refuse), Redis, the metering ledger, the access log.
- LiteLLM: its proxy (pinned version, own venv, no database) with a master key.

Targets are measured one after the other, never at once, each warmed up first: the four in
turn for each cell, `--rounds` times (the machine's speed drifts by tens of percent within
minutes; taking turns makes the drift hit them alike, LiteLLM too, so that the ratio to it is
of measurements taken seconds apart), and each cell is the round with its median requests/s.
All four run throughout; an idle LiteLLM takes ~0.3% of a core. Per cell:
requests/s, p50/p99 and what each adds to direct's, the server's CPU per request (process and
children) and its peak resident memory so far. LiteLLM serves 1/6 to 1/50 of the gateway's rate
here, so it gets fewer requests per cell (--peer-requests); the table says how many each target
got.

    .venv/bin/python -m bench.side_by_side [--requests 3000] [--peer-requests 400]
        [--concurrency 1,16,64] [--modes non-stream,stream] [--rounds 3] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from bench.auth_modes import auth_mode
from bench.harness import (
    Call,
    Result,
    Server,
    drive,
    gateway,
    machine_busy_seconds,
    redis_cpu_seconds,
    simulator_server,
    tree_cpu_seconds,
    tree_peak_rss_mib,
)
from bench.litellm_peer import MASTER_KEY, litellm_proxy
from bench.overhead import BODY, MODEL, config_for

MODES = ("non-stream", "stream")
DIRECT, BARE, ALL_ON, LITELLM = "direct", "gateway bare", "gateway all on", "litellm"
WARMUP = 200


def warmup(requests: int) -> int:
    """Warm-up requests before a cell: a quarter of the cell, at most WARMUP."""
    return max(1, min(WARMUP, requests // 4))


@dataclass(frozen=True, slots=True)
class Cell:
    target: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    added_p50_ms: float | None  # against direct's cell of the same mode and concurrency
    added_p99_ms: float | None
    cpu_ms_per_request: float  # the server's process tree, not the simulator behind it
    redis_cpu_ms_per_request: float | None  # the Redis behind it (all on), also per request
    peak_rss_mib: float  # VmHWM summed over the server's processes, at the end of the cell
    others_cores: float  # CPU that processes outside this benchmark took meanwhile (shared box)
    first_error: str | None = None  # what the first bad answer said, to tell why


@dataclass(frozen=True, slots=True)
class Ratios:
    mode: str
    concurrency: int
    all_on_vs_litellm_rps: float | None
    all_on_vs_bare_rps: float | None
    all_on_p99_over_p50: float | None
    litellm_vs_all_on_cpu: float | None  # CPU per request: the steadiest figure on a shared box


@dataclass(frozen=True, slots=True)
class SideBySide:
    cells: list[Cell]
    ratios: list[Ratios]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    server: Server
    headers: dict[str, str]
    requests: int
    redis_url: str | None = None  # the Redis behind the gateway (all on): its CPU is counted too


def counted_call(base: str, stream: bool, headers: dict[str, str], errors: list[str]) -> Call:
    """A chat completion that records a bad answer (status, or a stream not ending in [DONE])
    instead of raising, so one failure does not end a run and the count is printed."""
    url = f"{base}/v1/chat/completions"
    payload = orjson.dumps({**BODY, "stream": stream})
    all_headers = {"content-type": "application/json", **headers}

    async def call(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, data=payload, headers=all_headers) as resp:
                body = await resp.read()
        except aiohttp.ClientError as exc:
            errors.append(repr(exc))
            return
        if resp.status != 200 or (stream and not body.rstrip().endswith(b"data: [DONE]")):
            errors.append(f"{resp.status}: {body[:200]!r}")

    return call


@dataclass(frozen=True, slots=True)
class Measured:
    result: Result
    errors: list[str]
    cpu_seconds: float  # the server's process tree
    others_seconds: float  # every process on the box outside this benchmark's tree
    redis_cpu_seconds: float | None  # the Redis behind the server, if any


async def measure(target: Target, mode: str, concurrency: int) -> Measured:
    """Warm up, then one measured run."""
    errors: list[str] = []
    call = counted_call(target.server.url, mode == "stream", target.headers, errors)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await drive(session, call, warmup(target.requests), concurrency)
        errors.clear()
        cpu_before, others_before = tree_cpu_seconds(target.server.pid), _others()
        redis_before = await _redis_cpu(target.redis_url)
        result = await drive(session, call, target.requests, concurrency)
        cpu = tree_cpu_seconds(target.server.pid) - cpu_before
        redis = await _redis_cpu(target.redis_url)
    redis_cpu = None if redis is None or redis_before is None else redis - redis_before
    return Measured(result, errors, cpu, _others() - others_before, redis_cpu)


async def _redis_cpu(url: str | None) -> float | None:
    return None if url is None else await redis_cpu_seconds(url)


def _others() -> float:
    # The simulator, the server, Redis and LiteLLM are all this process's descendants.
    return machine_busy_seconds() - tree_cpu_seconds(os.getpid())


def cell(
    target: Target,
    mode: str,
    conc: int,
    measured: Measured,
    direct: Cell | None,
) -> Cell:
    result, errors, cpu = measured.result, measured.errors, measured.cpu_seconds
    p50, p99 = result.p50, result.pct(0.99)
    return Cell(
        target=target.name,
        mode=mode,
        concurrency=conc,
        requests=result.requests,
        errors=len(errors),
        rps=result.rps,
        p50_ms=p50,
        p99_ms=p99,
        added_p50_ms=None if direct is None else p50 - direct.p50_ms,
        added_p99_ms=None if direct is None else p99 - direct.p99_ms,
        cpu_ms_per_request=cpu / result.requests * 1000,
        redis_cpu_ms_per_request=(
            None
            if measured.redis_cpu_seconds is None
            else measured.redis_cpu_seconds / result.requests * 1000
        ),
        peak_rss_mib=tree_peak_rss_mib(target.server.pid),
        others_cores=max(0.0, measured.others_seconds / result.seconds),
        first_error=errors[0] if errors else None,
    )


@asynccontextmanager
async def _started(
    name: str, sim: Server, tmp: Path, requests: int, peer_requests: int
) -> AsyncIterator[Target]:
    if name == DIRECT:
        yield Target(name, sim, {}, requests)
    elif name == LITELLM:
        async with litellm_proxy(sim.url, MODEL, tmp) as proxy:
            yield Target(name, proxy, {"authorization": f"Bearer {MASTER_KEY}"}, peer_requests)
    else:
        all_on = name == ALL_ON
        async with (
            auth_mode("limits" if all_on else "none", tmp) as auth,
            gateway(config_for(sim.url, True, auth), tmp) as gw,
        ):
            yield Target(name, gw, await auth.headers(gw.url), requests, auth.redis_url)


async def run(
    requests: int = 3000,
    peer_requests: int = 400,
    *,
    levels: tuple[int, ...] = (1, 16, 64),
    modes: tuple[str, ...] = MODES,
    litellm: bool = True,
    rounds: int = 3,
    report: Callable[[Cell], None] | None = None,
) -> SideBySide:
    """Direct, bare, all on and LiteLLM (unless `litellm` is false): every mode and
    concurrency, `rounds` times, the targets in turn within each (so a drift of the machine's
    speed hits them alike); each cell is the round with its median requests/s. `report` sees
    each cell."""
    grid = [(mode, conc) for mode in modes for conc in levels]
    cells: list[Cell] = []

    def add(target: Target, mode: str, conc: int, measured: Measured) -> None:
        cells.append(cell(target, mode, conc, measured, _find(cells, DIRECT, mode, conc)))
        if report is not None:
            report(cells[-1])

    with tempfile.TemporaryDirectory() as tmp:
        async with simulator_server(MODEL) as sim, AsyncExitStack() as stack:
            names = (DIRECT, BARE, ALL_ON, LITELLM) if litellm else (DIRECT, BARE, ALL_ON)
            targets = [
                await stack.enter_async_context(
                    _started(name, sim, Path(tmp), requests, peer_requests)
                )
                for name in names
            ]
            taken = await _turns(targets, grid, rounds)
            for target in targets:
                for mode, conc in grid:
                    add(target, mode, conc, _median(taken[target.name, mode, conc]))
    return SideBySide(cells, [_ratios(cells, m, c) for m in modes for c in levels])


async def _turns(
    targets: list[Target], grid: list[tuple[str, int]], rounds: int
) -> dict[tuple[str, str, int], list[Measured]]:
    taken: dict[tuple[str, str, int], list[Measured]] = defaultdict(list)
    for done in range(1, rounds + 1):
        for mode, conc in grid:
            for target in targets:  # one at a time, never at once
                taken[target.name, mode, conc].append(await measure(target, mode, conc))
        names = ", ".join(target.name for target in targets)
        print(f"round {done}/{rounds} measured: {names}", file=sys.stderr, flush=True)
    return taken


def _median(taken: list[Measured]) -> Measured:
    """The measurement with the median requests/s (the upper one of an even count)."""
    return sorted(taken, key=lambda m: m.result.rps)[len(taken) // 2]


def _find(cells: list[Cell], target: str, mode: str, conc: int) -> Cell | None:
    return next(
        (c for c in cells if (c.target, c.mode, c.concurrency) == (target, mode, conc)), None
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _rps(c: Cell | None) -> float | None:
    return None if c is None else c.rps


def _cpu(c: Cell | None) -> float | None:
    return None if c is None else c.cpu_ms_per_request


def _ratios(cells: list[Cell], mode: str, conc: int) -> Ratios:
    on, bare, peer = (_find(cells, t, mode, conc) for t in (ALL_ON, BARE, LITELLM))
    return Ratios(
        mode=mode,
        concurrency=conc,
        all_on_vs_litellm_rps=_ratio(_rps(on), _rps(peer)),
        all_on_vs_bare_rps=_ratio(_rps(on), _rps(bare)),
        all_on_p99_over_p50=None if on is None else _ratio(on.p99_ms, on.p50_ms),
        litellm_vs_all_on_cpu=_ratio(_cpu(peer), _cpu(on)),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


HEADER = (
    "| target | mode | conc | requests | errors | rps | p50 ms | p99 ms | added p50 ms "
    "| added p99 ms | CPU ms/req | Redis CPU ms/req | peak RSS MiB | others cores |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: |"
)


def row(c: Cell) -> str:
    return (
        f"| {c.target} | {c.mode} | {c.concurrency} | {c.requests} | {c.errors} | {c.rps:.0f} "
        f"| {c.p50_ms:.3f} | {c.p99_ms:.3f} | {_ms(c.added_p50_ms)} | {_ms(c.added_p99_ms)} "
        f"| {c.cpu_ms_per_request:.3f} | {_ms(c.redis_cpu_ms_per_request)} "
        f"| {c.peak_rss_mib:.0f} | {c.others_cores:.2f} |"
    )


def ratio_table(ratios: list[Ratios]) -> str:
    lines = [
        "| mode | conc | all on / LiteLLM rps | all on / bare rps | all on p99 / p50 "
        "| LiteLLM / all on CPU per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ratios:
        lines.append(
            f"| {r.mode} | {r.concurrency} | {_x(r.all_on_vs_litellm_rps)} "
            f"| {_x(r.all_on_vs_bare_rps)} | {_x(r.all_on_p99_over_p50)} "
            f"| {_x(r.litellm_vs_all_on_cpu)} |"
        )
    return "\n".join(lines)


def print_row(c: Cell) -> None:
    print(row(c), flush=True)
    if c.first_error is not None:
        print(f"{c.target} {c.mode} {c.concurrency}: {c.first_error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="per cell, direct and gateway")
    parser.add_argument("--peer-requests", type=int, default=400, help="per cell, LiteLLM")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--modes", default=",".join(MODES), help="non-stream,stream")
    parser.add_argument("--rounds", type=int, default=3, help="turns per cell; the median is kept")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds takes 1 or more")
    modes = tuple(m for m in args.modes.split(",") if m)
    if not set(modes) <= set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    levels = tuple(int(c) for c in args.concurrency.split(","))
    print(
        f"requests per cell: {args.requests} (direct, gateway), "
        + ("LiteLLM left out" if args.no_litellm else f"{args.peer_requests} (LiteLLM)")
        + f"; {args.rounds} rounds, the median kept"
        + "; warm-up before each cell: a quarter of its requests, at most 200",
        flush=True,
    )
    print(HEADER, flush=True)
    figures = asyncio.run(
        run(
            args.requests,
            args.peer_requests,
            levels=levels,
            modes=modes,
            litellm=not args.no_litellm,
            rounds=args.rounds,
            report=print_row,
        )
    )
    print()
    print(ratio_table(figures.ratios))
    errors = sum(c.errors for c in figures.cells)
    print(f"\nerrors: {errors}")


if __name__ == "__main__":
    main()
