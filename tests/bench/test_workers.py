"""bench.workers as a user runs it: `--help`, and its shortest run at one and two workers, whose
table, sizing sentence and error count are printed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module

NUMBER = r"([0-9.]+)"
ROW = re.compile(r"^\| " + r" \| ".join([NUMBER] * 15) + r" \|$", re.M)


def run(args: list[str], tmp_path: Path, timeout_s: float) -> str:
    return run_module("bench.workers", args, tmp_path, timeout_s)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run(["--help"], tmp_path, 60)
    for option in ("--requests", "--workers", "--concurrency"):
        assert option in output


def test_two_workers_run_as_more_processes_and_every_party_s_cpu_is_printed(
    tmp_path: Path,
) -> None:
    # /proc counts CPU in 10 ms ticks: enough requests that the gateway's CPU spans several
    output = run(["--requests", "200", "--workers", "1,2", "--concurrency", "4"], tmp_path, 300)
    rows = [[float(v) for v in match] for match in ROW.findall(output)]
    assert len(rows) == 2, output
    one, two = rows
    assert (one[0], two[0]) == (1, 2)
    assert one[1] == 1  # one process serves
    assert two[1] >= 3  # a supervisor and two workers
    for fields in rows:
        assert fields[3] == 200  # requests
        assert fields[4] == 0  # errors
        assert fields[5] > 0  # requests/s
        assert fields[6] <= fields[7]  # p50 <= p99
        assert fields[9] > 0  # the gateway's CPU per request was counted
        assert fields[14] > 0  # requests/s per gateway core
    sizing = re.search(r"^sizing: one gateway core serves (\d+)-(\d+) requests/s", output, re.M)
    assert sizing, output
    assert re.search(r"^errors: 0$", output, re.M)
