"""bench.engine_streams as a user runs it: `--help`, and how it picks the streams' lengths. Its
shortest run against the real vLLM engine is tests/e2e/test_engine_streams_e2e.py (on the
session's engine: one vLLM start fewer)."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.engine_streams import Options, Target, lengths, order, payload
from tests.bench.modules import run_module


def run(args: list[str], tmp_path: Path, timeout_s: float) -> str:
    return run_module("bench.engine_streams", args, tmp_path, timeout_s)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run(["--help"], tmp_path, 60)
    for option in (
        "--streams",
        "--max-tokens",
        "--rounds",
        "--waves",
        "--seed",
        "--engine",
        "--direct-usage",
    ):
        assert option in output


def test_lengths_vary_around_the_mean_and_sum_to_it() -> None:
    for streams, waves in ((32, 3), (3, 1)):
        options = Options(streams=streams, max_tokens=64, waves=waves, seed=7)
        got = lengths(options)
        assert len(got) == streams * waves
        assert sum(got) == 64 * streams * waves
        assert all(32 <= n <= 96 for n in got)
        assert got == lengths(options)  # seeded: the same every run
    assert len(set(lengths(Options(max_tokens=64)))) > 10  # they do vary


def test_each_side_goes_first_in_every_other_round() -> None:
    direct, via = Target("direct", "http://d", {}), Target("gateway", "http://g", {})
    firsts = [order(r, direct, via)[0].side for r in range(1, 5)]
    assert firsts == ["direct", "gateway", "direct", "gateway"]
    assert all(
        sorted(t.side for t in order(r, direct, via)) == ["direct", "gateway"] for r in (1, 2)
    )


def test_the_direct_side_can_ask_for_usage_in_every_frame_as_the_gateway_does() -> None:
    plain, every = orjson.loads(payload(8, True)), orjson.loads(payload(8, True, every_frame=True))
    assert plain["stream_options"] == {"include_usage": True}
    assert every["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert {k: v for k, v in every.items() if k != "stream_options"} == {
        k: v for k, v in plain.items() if k != "stream_options"
    }
