"""bench.overhead as a user runs it: `--help`, and a short run whose rows give the gateway's
CPU and system calls per request; one answer to the client is one write (head and body
together: gateway/http_protocol.py), so a bare non-streaming request costs about two writes:
the engine's request and the client's answer."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench.modules import run_module

ROW = re.compile(
    r"^(non-stream|stream) +(\d+) +(\d+) +(\d+) +([0-9.]+) +([0-9.]+) +([0-9.]+) +(-?[0-9.]+) +"
    r"(-?[0-9.]+) +(\d+) +([0-9.]+) +([0-9.]+)$",
    re.M,
)


def test_help_names_the_options(tmp_path: Path) -> None:
    output = run_module("bench.overhead", ["--help"], tmp_path, 60)
    for option in ("--requests", "--access-log", "--concurrency", "--auth"):
        assert option in output


def test_a_short_run_prints_cpu_and_system_calls_per_request(tmp_path: Path) -> None:
    args = ["--requests", "300", "--concurrency", "1", "--auth", "none"]
    output = run_module("bench.overhead", args, tmp_path, 180)
    rows = {m.group(1): m.groups()[2:] for m in ROW.finditer(output)}
    assert set(rows) == {"non-stream", "stream"}, output
    for *_, cpu_us, reads, writes in rows.values():
        assert int(cpu_us) > 0
        assert float(reads) >= 2  # the client's request, the engine's answer
        assert float(writes) >= 2  # the engine's request, the client's answer
    writes = float(rows["non-stream"][-1])
    assert writes < 2.5, output  # not three: the answer's head and body in one write
