"""bench.stream_cpu as a user runs it: `--help`, and a short run that prints, per pass, every
frame the clients received and the gateway's CPU per frame."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.modules import run_module

ROW = re.compile(r"^ +(\d+) +(\d+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", re.M)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run_module("bench.stream_cpu", ["--help"], tmp_path, 60)
    for option in ("--streams", "--tokens", "--requests", "--passes", "--itl-ms"):
        assert option in output


def test_a_short_run_counts_every_frame_and_the_gateways_cpu(tmp_path: Path) -> None:
    # /proc counts CPU in 10 ms ticks: enough frames that a pass takes several of them
    args = ["--streams", "4", "--tokens", "16", "--requests", "48", "--passes", "2"]
    output = run_module("bench.stream_cpu", [*args, "--itl-ms", "2"], tmp_path, 180)
    rows = ROW.findall(output)
    assert [int(n) for n, *_ in rows] == [1, 2], output
    for _, frames, seconds, cpu, per_frame in rows:
        assert int(frames) == 48 * 16  # every stream as long as asked (ignore_eos)
        assert float(seconds) > 0
        assert float(cpu) > 0
        # CPU is printed to 0.01 s: per frame times frames gives it back to that
        assert float(per_frame) * int(frames) / 1e6 == pytest.approx(float(cpu), abs=0.006)
    assert re.search(r"^gateway CPU us per frame, median pass: [0-9.]+$", output, re.M)
