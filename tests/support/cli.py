"""Run the `llmaas` admin commands as a user would: a separate process against a gateway."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

# The installed entry point, as users run it (not `python -m gateway`).
LLMAAS = Path(sys.executable).with_name("llmaas")


def llmaas() -> str:
    if not LLMAAS.is_file():
        pytest.fail(f"{LLMAAS} is missing: install the project (pip install -e .) into this venv")
    return str(LLMAAS)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`llmaas <args>` to completion (at most 60 s), with `env` added to the environment:
    exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        llmaas(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        # stopped as a user's Ctrl-C would (`llmaas up` then stops what it started: a command
        # that went on where it should have refused left an engine and a Redis running)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_llmaas(gateway: str, *args: str, token: str) -> tuple[int, str, str]:
    """`llmaas <args> --url <gateway> --admin-token <token>`: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        llmaas(),
        *args,
        "--url",
        gateway,
        "--admin-token",
        token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
