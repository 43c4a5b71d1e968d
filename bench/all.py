"""Every benchmark in one run (`make bench`), each printing its own table, then one table of
the performance targets with what this run measured and whether each is met.

In order: the side-by-side run (simulator direct, gateway bare, gateway with everything on,
LiteLLM's proxy), `--workers` 1 and 2, 32 streams through the real vLLM CPU engine, and the
soak. Each figure is a ratio or a difference measured in this run, on this machine.

    .venv/bin/python -m bench.all [--soak-seconds 1200] [--requests 3000] [--no-engine]
        [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from dataclasses import dataclass

from bench import engine_streams, side_by_side, soak, workers


@dataclass(frozen=True, slots=True)
class Goal:
    """One target: what it asks, what was measured, and whether it holds (None: `unknown` says
    why not: not run, or a measurement too coarse to tell)."""

    name: str
    wanted: str
    measured: str
    met: bool | None
    unknown: str = "not run"


def _cell(run: side_by_side.SideBySide, target: str, mode: str, conc: int) -> side_by_side.Cell:
    return next(c for c in run.cells if (c.target, c.mode, c.concurrency) == (target, mode, conc))


def side_by_side_goals(run: side_by_side.SideBySide, litellm: bool) -> list[Goal]:
    goals: list[Goal] = []
    on, bare = side_by_side.ALL_ON, side_by_side.BARE
    for mode in side_by_side.MODES:
        serial = _cell(run, on, mode, 1)
        p50, p99 = serial.added_p50_ms or 0.0, serial.added_p99_ms or 0.0
        goals.append(Goal(f"serial added p50, {mode}", "<= 0.5 ms", f"{p50:.3f} ms", p50 <= 0.5))
        goals.append(Goal(f"serial added p99, {mode}", "<= 1 ms", f"{p99:.3f} ms", p99 <= 1.0))
    for mode in side_by_side.MODES:
        ratio = _cell(run, on, mode, 16).rps / _cell(run, bare, mode, 16).rps
        cost = 1 - ratio
        goals.append(
            Goal(
                f"keys + limits + metering cost at conc 16, {mode}",
                "<= 20% of bare rps",
                f"{cost:.0%} (all on {ratio:.2f}x bare)",
                cost <= 0.20,
            )
        )
    for mode in side_by_side.MODES:
        cell = _cell(run, on, mode, 64)
        if litellm:
            peer = _cell(run, side_by_side.LITELLM, mode, 64)
            times = cell.rps / peer.rps
            goals.append(
                Goal(f"conc 64 vs LiteLLM, {mode}", ">= 25x rps", f"{times:.1f}x", times >= 25)
            )
        spread = cell.p99_ms / cell.p50_ms
        goals.append(Goal(f"conc 64 p99 / own p50, {mode}", "<= 3x", f"{spread:.2f}x", spread <= 3))
    return goals


def engine_goals(figures: engine_streams.Figures) -> list[Goal]:
    ratio, added = figures.throughput_ratio, figures.added_ttft_p50_ms
    low, high = figures.added_ttft_p50_interval_ms
    # Met only if the whole 95% interval is within 2 ms; missed only if all of it is above.
    ttft_met = True if high <= 2.0 else (False if low > 2.0 else None)
    return [
        Goal(
            f"{figures.options.streams} streams on vLLM: tokens/s vs direct",
            ">= 97%",
            f"{ratio:.1%} (per round: " + ", ".join(f"{r:.0%}" for r in figures.round_ratios) + ")",
            ratio >= 0.97,
        ),
        Goal(
            "added TTFT p50 on vLLM (paired streams)",
            "<= 2 ms",
            f"{added:.1f} ms (95%: {low:.1f} to {high:.1f})",
            ttft_met,
            "cannot tell",
        ),
    ]


def soak_goals(figures: soak.Figures) -> list[Goal]:
    minutes = figures.load_seconds / 60
    rss, fds = figures.rss_growth_pct, figures.fds_growth
    return [
        Goal(
            f"soak {minutes:.0f} min: RSS growth",
            "<= 5%",
            f"{rss:+.1f}% ({figures.requests} requests, {figures.errors} errors)",
            rss <= 5.0 and figures.errors == 0,
        ),
        Goal(
            f"soak {minutes:.0f} min: open descriptors",
            "no growth",
            f"{fds:+d}{_kinds(figures)}, {figures.leases} leases left",
            fds <= 0 and figures.leases == 0,
        ),
    ]


def _kinds(figures: soak.Figures) -> str:
    """` (to 127.0.0.1:6379 ESTABLISHED 3 -> 4)`: which descriptors came or went."""
    changed = figures.fd_kinds_changed
    shown = "; ".join(f"{kind} {start} -> {end}" for kind, (start, end) in changed.items())
    return f" ({shown})" if shown else ""


def table(goals: list[Goal]) -> str:
    lines = ["| target | wanted | measured | met |", "| --- | --- | --- | --- |"]
    for g in goals:
        met = g.unknown if g.met is None else ("yes" if g.met else "NO")
        lines.append(f"| {g.name} | {g.wanted} | {g.measured} | {met} |")
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> list[Goal]:
    goals: list[Goal] = []
    print("## side by side", flush=True)
    print(side_by_side.HEADER, flush=True)
    pair = await side_by_side.run(
        args.requests, args.peer_requests, litellm=args.litellm, report=side_by_side.print_row
    )
    print("\n" + side_by_side.ratio_table(pair.ratios), flush=True)
    goals += side_by_side_goals(pair, args.litellm)

    print("\n## --workers 1 and 2", flush=True)
    print(workers.HEADER, flush=True)
    cells = await workers.run(args.requests, report=workers.print_row)
    print("\n" + workers.sizing(cells), flush=True)

    if args.engine:
        print("\n## 32 streams through the real engine", flush=True)
        streams = await engine_streams.measure(engine_streams.Options(rounds=args.rounds))
        print(engine_streams.render(streams), flush=True)
        goals += engine_goals(streams)
    else:
        goals.append(Goal("streams on vLLM", ">= 97%, TTFT <= 2 ms", "--no-engine", None))

    print(f"\n## soak, {args.soak_seconds:.0f} s", flush=True)
    soaked = await soak.soak(soak.Options(seconds=args.soak_seconds))
    print(soak.render(soaked), flush=True)
    goals += soak_goals(soaked)
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="per side-by-side cell")
    parser.add_argument("--peer-requests", type=int, default=400, help="per LiteLLM cell")
    parser.add_argument("--rounds", type=int, default=2, help="engine rounds (each side)")
    parser.add_argument("--soak-seconds", type=float, default=1200.0)
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    args = parser.parse_args()
    started = time.monotonic()
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    goals = asyncio.run(run_all(args))
    print(f"\n## targets ({(time.monotonic() - started) / 60:.0f} min in all)")
    print(table(goals))


if __name__ == "__main__":
    main()
