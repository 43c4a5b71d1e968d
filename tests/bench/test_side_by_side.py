"""bench.side_by_side as a user runs it: `--help`, and its shortest run with all four targets
(LiteLLM's proxy included, installed once into its cached venv), every cell answered, in two
rounds (the median kept: one row per cell), LiteLLM taking its turn in each round."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module, run_module_streams

NUMBER = r"(-|[0-9.-]+)"
CELL = re.compile(
    r"^\| (direct|gateway bare|gateway all on|litellm) \| (non-stream|stream) \| "
    + r" \| ".join([NUMBER] * 12)
    + r" \|$",
    re.M,
)
RATIO = re.compile(
    r"^\| (non-stream|stream) \| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$",
    re.M,
)


def run(args: list[str], tmp_path: Path, timeout_s: float) -> str:
    return run_module("bench.side_by_side", args, tmp_path, timeout_s)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run(["--help"], tmp_path, 60)
    options = ("--requests", "--peer-requests", "--concurrency", "--modes", "--rounds")
    for option in (*options, "--no-litellm"):
        assert option in output


def test_every_target_answers_every_cell_and_the_ratios_are_printed(tmp_path: Path) -> None:
    args = ["--requests", "100", "--peer-requests", "20", "--concurrency", "1,4", "--rounds", "2"]
    output, progress = run_module_streams("bench.side_by_side", args, tmp_path, 900)
    # every target in every round, LiteLLM too: its ratio is of measurements seconds apart
    every = "direct, gateway bare, gateway all on, litellm"
    assert re.findall(r"^round (\d)/2 measured: (.*)$", progress, re.M) == [
        ("1", every),
        ("2", every),
    ]
    rows = CELL.findall(output)
    cells = {(m[0], m[1], int(m[2])): m[3:] for m in rows}
    assert len(rows) == len(cells)  # one row per cell: the median round, not every round
    targets = ("direct", "gateway bare", "gateway all on", "litellm")
    assert set(cells) == {
        (t, m, c) for t in targets for m in ("non-stream", "stream") for c in (1, 4)
    }
    for (target, _, _), fields in cells.items():
        requests, errors, rps, p50, p99, added_p50, added_p99, cpu_ms, redis_ms, rss, others = (
            fields
        )
        assert int(requests) == (20 if target == "litellm" else 100)
        assert int(errors) == 0
        assert float(rps) > 0
        assert float(p50) <= float(p99)
        assert (added_p50 == "-") == (added_p99 == "-") == (target == "direct")
        assert float(cpu_ms) >= 0
        # Redis's CPU is counted where there is one: only the gateway with everything on
        assert (redis_ms != "-") == (target == "gateway all on")
        if redis_ms != "-":
            assert float(redis_ms) > 0
        assert float(rss) > 0  # the server's peak memory was read
        assert float(others) >= 0
    ratios = RATIO.findall(output)
    assert {(m, int(c)) for m, c, *_ in ratios} == {
        (m, c) for m in ("non-stream", "stream") for c in (1, 4)
    }
    for *_, vs_litellm, vs_bare, p99_over_p50, cpu_vs_litellm in ratios:
        assert float(vs_litellm) > 0
        assert float(vs_bare) > 0
        assert float(p99_over_p50) >= 1
        assert float(cpu_vs_litellm) > 0
    assert re.search(r"^errors: 0$", output, re.M)
