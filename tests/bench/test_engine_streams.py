"""bench.engine_streams as a user runs it: `--help`, and its shortest run against the real vLLM
engine (prepared by `make engine`), which prints both sides' figures and their ratios."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.modules import run_module

ROW = re.compile(
    r"^(direct|gateway)\s+(all|\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+"
    r"([0-9.]+)\s+([0-9.]+)$",
    re.M,
)


def run(args: list[str], tmp_path: Path, timeout_s: float) -> str:
    return run_module("bench.engine_streams", args, tmp_path, timeout_s)


def figure(output: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}: (-?[0-9.]+)$", output, re.M)
    assert match, f"{name!r} missing from:\n{output}"
    return float(match.group(1))


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run(["--help"], tmp_path, 60)
    for option in ("--streams", "--max-tokens", "--rounds", "--waves"):
        assert option in output


@pytest.mark.e2e
def test_the_shortest_run_streams_every_token_on_both_sides(tmp_path: Path) -> None:
    args = ["--streams", "4", "--max-tokens", "8", "--rounds", "1", "--waves", "1"]
    output = run(args, tmp_path, 900)
    rows = {(m.group(1), m.group(2)): m.groups()[2:] for m in ROW.finditer(output)}
    assert set(rows) == {("direct", "1"), ("gateway", "1"), ("direct", "all"), ("gateway", "all")}
    ignore_eos = "ignore_eos: true" in output
    for side in ("direct", "gateway"):
        streams, errors, tokens, seconds, tokens_per_s, p50, p99 = rows[(side, "all")]
        assert (int(streams), int(errors)) == (4, 0)
        if ignore_eos:  # every stream is as long as asked: 4 streams of 8 tokens
            assert int(tokens) == 32
        else:
            assert 0 < int(tokens) <= 32
        assert float(seconds) > 0
        assert float(tokens_per_s) > 0
        assert 0 < float(p50) <= float(p99)
    assert figure(output, "errors") == 0
    assert figure(output, "tokens/s ratio (gateway/direct)") > 0
    assert figure(output, "tokens/s ratio per round") > 0  # one round: one ratio
    figure(output, "added TTFT p50 ms")
    figure(output, "added TTFT p99 ms")
