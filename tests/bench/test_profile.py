"""bench.profile as a user runs it: `--help`, and a short sampled run of the gateway with
everything on, whose shares and per-request figures are printed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run_module("bench.profile", ["--help"], tmp_path, 60)
    for option in ("--seconds", "--concurrency", "--stream", "--auth", "--save"):
        assert option in output


def test_a_short_profile_names_where_the_gateway_spends_its_time(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    args = ["--seconds", "3", "--concurrency", "4", "--save", str(stacks)]
    output = run_module("bench.profile", args, tmp_path, 300)
    busy = re.search(r"^busy time per request: (\d+) µs$", output, re.M)
    assert busy, output
    assert int(busy.group(1)) > 0
    packages = dict(re.findall(r"^(\S+)\s+[0-9.]+%\s+([0-9.]+)$", output, re.M))
    assert float(packages["gateway"]) > 0, output  # the gateway's own code is sampled
    assert "(gateway/" in output  # and named by function
    assert stacks.read_text().count("\n") > 10  # py-spy's collapsed stacks were kept
