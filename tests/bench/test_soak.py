"""bench.soak as a user runs it: `--help`, and a bounded soak whose figures are printed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module


def run(args: list[str], tmp_path: Path, timeout_s: float) -> str:
    return run_module("bench.soak", args, tmp_path, timeout_s)


def figure(output: str, name: str) -> str:
    match = re.search(rf"^\s*{re.escape(name)}: (\S+)$", output, re.M)
    assert match, f"{name!r} missing from:\n{output}"
    return match.group(1)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run(["--help"], tmp_path, 60)
    for option in ("--seconds", "--concurrency", "--sample-every", "--warmup", "--itl-ms"):
        assert option in output


def test_a_bounded_soak_settles_every_request_and_prints_its_figures(tmp_path: Path) -> None:
    output = run(
        ["--seconds", "15", "--warmup", "3", "--sample-every", "5", "--concurrency", "8"],
        tmp_path,
        240,
    )
    assert int(figure(output, "errors")) == 0
    assert int(figure(output, "leases held")) == 0
    assert float(figure(output, "in flight")) == 0
    assert int(figure(output, "requests done")) > 0
    for kind in ("plain", "stream", "hang-up"):
        assert int(figure(output, kind)) > 0, f"no {kind} requests completed"
    assert float(figure(output, "rps")) > 0
    start, end, peak = (int(v) for v in figure(output, "RSS KiB start/end/peak").split("/"))
    assert 0 < start <= peak
    assert end <= peak
    float(figure(output, "RSS growth %"))
    fds_start, fds_end = (int(v) for v in figure(output, "fds start/end").split("/"))
    assert fds_start > 0
    assert fds_end > 0
    assert int(figure(output, "fds growth")) == fds_end - fds_start
    changed = re.findall(r"^  fds (.+): (\d+) -> (\d+)$", output, re.M)
    assert sum(int(end) - int(start) for _, start, end in changed) == fds_end - fds_start
    for kind, _, _ in changed:
        assert not kind.startswith(("socket", "tcp ")), f"a descriptor left unnamed: {kind}"
