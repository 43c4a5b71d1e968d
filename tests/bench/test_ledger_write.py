"""bench.ledger_write as a user runs it: `--help`, and a short run whose four rows (two ways of
sending, batches of 1 and 16) print a CPU, wall and Redis time per settlement."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module

ROW = re.compile(
    r"^(redis-py pipeline|gateway pipe \(redis_pipe\)) +(1|16) +([0-9.]+) +([0-9.]+) +([0-9.]+)$",
    re.M,
)


def test_help_names_the_option(tmp_path: Path) -> None:
    assert "--settlements" in run_module("bench.ledger_write", ["--help"], tmp_path, 60)


def test_both_ways_print_their_cost_per_settlement(tmp_path: Path) -> None:
    output = run_module("bench.ledger_write", ["--settlements", "64"], tmp_path, 120)
    rows = ROW.findall(output)
    assert {(way, int(batch)) for way, batch, *_ in rows} == {
        (way, batch)
        for way in ("redis-py pipeline", "gateway pipe (redis_pipe)")
        for batch in (1, 16)
    }, output
    for *_, cpu, wall, redis_us in rows:
        assert 0 < float(cpu) <= float(wall) * 1.5  # CPU is this process's share of the wall time
        assert float(redis_us) > 0  # Redis ran the script
