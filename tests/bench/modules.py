"""Running a benchmark module as a user does: `python -m bench.<name>` from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT


def run_module(module: str, args: list[str], tmp_path: Path, timeout_s: float) -> str:
    """Its stdout; it must exit 0. Its temporary files go under tmp_path."""
    return run_module_streams(module, args, tmp_path, timeout_s)[0]


def run_module_streams(
    module: str, args: list[str], tmp_path: Path, timeout_s: float
) -> tuple[str, str]:
    """Its stdout and stderr (where progress goes); it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=timeout_s,  # a hang guard only
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr
