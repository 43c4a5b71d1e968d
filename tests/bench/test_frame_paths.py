"""bench.frame_paths as a user runs it: `--help`, and a short run that prints both readers,
both read shapes, for each token count asked, with a ratio that is fast / general."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench.modules import run_module

ROW = re.compile(
    r"^(collected|relayed) +(\d+) +(one|per frame) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", re.M
)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run_module("bench.frame_paths", ["--help"], tmp_path, 60)
    for option in ("--tokens", "--number"):
        assert option in output


def test_a_short_run_prints_every_reader_and_shape(tmp_path: Path) -> None:
    output = run_module(
        "bench.frame_paths", ["--tokens", "4", "8", "--number", "20"], tmp_path, 120
    )
    rows = ROW.findall(output)
    assert [(r[0], int(r[1]), r[2]) for r in rows] == [
        (reader, tokens, shape)
        for tokens in (4, 8)
        for reader in ("collected", "relayed")
        for shape in ("one", "per frame")
    ], output
    for *_, general, fast, ratio in rows:
        assert float(general) > 0
        assert float(fast) > 0
        assert float(ratio) == pytest.approx(float(fast) / float(general), abs=0.02)
