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
    def figures(gateway_tokens: int, added: list[float]) -> Figures:
        direct_ttft = [100.0 + 10 * (i % 7) for i in range(len(added))]  # steps apart
        pairs = [(d, d + a) for d, a in zip(direct_ttft, added, strict=True)]
        passes = [
            Pass("direct", 1, 32, 0, 1000, 10.0, [100.0]),
            Pass("gateway", 1, 32, 0, gateway_tokens, 10.0, [500.0]),  # TTFT alone: not used
            Pass("direct", 1, 50, 0, 1000, 20.0, [d for d, _ in pairs], paired=True),
            Pass("gateway", 1, 50, 0, 1000, 20.0, [g for _, g in pairs], paired=True),
        ]
        direct = Side.of("direct", passes)
        return Figures(Options(), True, passes, direct, Side.of("gateway", passes), pairs)

    # Each pair's difference counts, not the sides' medians: the direct TTFTs' spread (60 ms
    # between engine steps) does not blur a 1 ms difference.
    met = bench_all.engine_goals(figures(990, [1.0] * 25 + [1.5] * 25))
    assert [g.met for g in met] == [True, True]  # the whole interval within 2 ms
    missed = bench_all.engine_goals(figures(900, [40.0] * 50))
    assert [g.met for g in missed] == [False, False]  # all of it above 2 ms
    assert "90.0%" in missed[0].measured
    assert "40.0 ms" in missed[1].measured
    spread = [3.0 * (i - 25) for i in range(50)]  # wide, centred: straddles 2 ms
    unclear = bench_all.engine_goals(figures(990, spread))
    assert unclear[1].met is None
    table = bench_all.table([*missed, unclear[1]])
    assert table.count("| NO |") == 2
    assert table.endswith("| cannot tell |")
