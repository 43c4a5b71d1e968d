"""Processes as /proc shows them (Linux): what tests of signals and stops look at."""

from __future__ import annotations

from pathlib import Path


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (one that exited, not yet reaped)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
