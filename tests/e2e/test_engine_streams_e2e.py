"""bench.engine_streams as a user runs it, its shortest run against the session's real vLLM
engine (`--engine`; the bench starts its own without it): it prints both sides' figures and
their ratios."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.bench.modules import run_module
from tests.e2e.conftest import Engines

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ROW = re.compile(  # a pass alone, or all of a side's passes alone
    r"^(direct|gateway)\s+(all|\d+)\s+alone\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+"
    r"([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)(?:\s+([0-9.]+))?$",
    re.M,
)
PAIRED = re.compile(  # a side's share of a paired pass, or of all of them
    r"^(direct|gateway)\s+(all|\d+)\s+paired\s+(\d+)\s+.*?([0-9.]+)\s+([0-9.]+)(?:\s+[0-9.]+)?$",
    re.M,
)


def figure(output: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}: (-?[0-9.]+)$", output, re.M)
    assert match, f"{name!r} missing from:\n{output}"
    return float(match.group(1))


@pytest.mark.parametrize("direct_usage", [False, True])
async def test_the_shortest_run_streams_every_token_on_both_sides(
    engines: Engines, tmp_path: Path, direct_usage: bool
) -> None:
    """`--direct-usage`: the direct side asks vLLM for usage in every frame too (the gateway's
    share of the gap alone); the figures are the same, and say so."""
    args = ["--streams", "4", "--max-tokens", "8", "--rounds", "1", "--waves", "1"]
    args += ["--engine", engines.chat, *(["--direct-usage"] if direct_usage else [])]
    output = await asyncio.to_thread(run_module, "bench.engine_streams", args, tmp_path, 900)
    assert ("direct asks for usage in every frame" in output) is direct_usage
    rows = {(m.group(1), m.group(2)): m.groups()[2:] for m in ROW.finditer(output)}
    assert set(rows) == {("direct", "1"), ("gateway", "1"), ("direct", "all"), ("gateway", "all")}
    ignore_eos = "ignore_eos: true" in output
    for side in ("direct", "gateway"):
        streams, errors, tokens, seconds, tokens_per_s, p50, p99, _ = rows[(side, "all")]
        assert (int(streams), int(errors)) == (4, 0)
        if ignore_eos:  # every stream is as long as asked: lengths 8 ± 4 summing to 4 * 8
            assert int(tokens) == 32
        else:
            assert 0 < int(tokens) <= 48
        assert float(seconds) > 0
        assert float(tokens_per_s) > 0
        assert 0 < float(p50) <= float(p99)
    gateway_cpu = float(rows[("gateway", "1")][-1])
    assert gateway_cpu > 0  # the gateway worked during its own pass
    paired = {(m.group(1), m.group(2)): m.groups()[2:] for m in PAIRED.finditer(output)}
    assert set(paired) == {(s, r) for s in ("direct", "gateway") for r in ("1", "all")}
    for side in ("direct", "gateway"):  # every request to both sides: 4 each
        streams, p50, p99 = paired[(side, "all")]
        assert int(streams) == 4
        assert 0 < float(p50) <= float(p99)
    assert figure(output, "errors") == 0
    assert figure(output, "tokens/s ratio (gateway/direct)") > 0
    assert figure(output, "tokens/s ratio per round") > 0  # one round: one ratio
    assert figure(output, "gateway CPU ms per 1k tokens") > 0
    assert figure(output, "pairs both sides served") == 4
    added = figure(output, "added TTFT p50 ms")
    low, high = interval(output, "added TTFT p50 ms, 95% interval")
    assert low <= added <= high
    figure(output, "added TTFT p99 ms")
    figure(output, "added TTFT p50 ms between passes alone")


def interval(output: str, name: str) -> tuple[float, float]:
    match = re.search(rf"^{re.escape(name)}: (-?[0-9.]+) (-?[0-9.]+)$", output, re.M)
    assert match, f"{name!r} missing from:\n{output}"
    return float(match.group(1)), float(match.group(2))
