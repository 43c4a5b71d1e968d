"""Run the `llmaas` admin commands as a user would: a separate process against a gateway."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# The installed entry point, as users run it (not `python -m gateway`).
LLMAAS = Path(sys.executable).with_name("llmaas")


async def run_llmaas(gateway: str, *args: str, token: str) -> tuple[int, str, str]:
    """`llmaas <args> --url <gateway> --admin-token <token>`: exit status, stdout, stderr."""
    assert LLMAAS.is_file(), f"{LLMAAS} is missing: run `make install`"
    proc = await asyncio.create_subprocess_exec(
        str(LLMAAS),
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
