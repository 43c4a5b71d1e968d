"""bench.all (`make bench`): its `--help`, and the targets table it builds from each
benchmark's figures (the benchmarks themselves are run by their own tests)."""

from __future__ import annotations

from pathlib import Path

from bench import all as bench_all
from bench.engine_streams import Figures, Options, Pass, Side
from tests.bench.modules import run_module


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run_module("bench.all", ["--help"], tmp_path, 60)
    for option in ("--soak-seconds", "--requests", "--no-engine", "--no-litellm"):
        assert option in output


def test_engine_goals_hold_or_fail_on_the_measured_figures() -> None:
    def figures(gateway_tokens: int, gateway_ttft: list[float]) -> Figures:
        direct_ttft = [100.0] * 25 + [100.5] * 25
        passes = [
            Pass("direct", 1, 32, 0, 1000, 10.0, [100.0]),
            Pass("gateway", 1, 32, 0, gateway_tokens, 10.0, [500.0]),  # TTFT alone: not used
            Pass("direct", 1, 50, 0, 1000, 20.0, direct_ttft, mixed=True),
            Pass("gateway", 1, 50, 0, 1000, 20.0, gateway_ttft, mixed=True),
        ]
        direct = Side.of("direct", passes)
        return Figures(Options(), True, passes, direct, Side.of("gateway", passes))

    same = [100.0] * 25 + [100.5] * 25
    met = bench_all.engine_goals(figures(990, [t + 1 for t in same]))
    assert [g.met for g in met] == [True, True]  # the whole interval within 2 ms
    missed = bench_all.engine_goals(figures(900, [t + 40 for t in same]))
    assert [g.met for g in missed] == [False, False]  # all of it above 2 ms
    assert "90.0%" in missed[0].measured
    assert "40.0 ms" in missed[1].measured
    spread = [100.0 + 3 * (i - 25) for i in range(50)]  # wide, centred: straddles 2 ms
    unclear = bench_all.engine_goals(figures(990, spread))
    assert unclear[1].met is None
    table = bench_all.table([*missed, unclear[1]])
    assert table.count("| NO |") == 2
    assert table.endswith("| cannot tell |")
