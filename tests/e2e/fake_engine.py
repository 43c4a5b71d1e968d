"""A stand-in for the engine venv's python (a shell script, given the engine's arguments), and
the live processes of a group: for the tests of launching and supervising engines, which run
in seconds without vLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def group_processes(pgid: int) -> list[str]:
    """Live (non-zombie) processes of the group, as `ps` lists them."""
    ps = await asyncio.create_subprocess_exec(
        "ps", "-ww", "-eo", "pgid=,stat=,args=", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await ps.communicate()
    rows = (line.split(None, 2) for line in out.decode().splitlines())
    return [" ".join(row) for row in rows if int(row[0]) == pgid and not row[1].startswith("Z")]


def fake_engine(tmp_path: Path, body: str) -> Path:
    """An executable that stands in for the engine venv's python; `$port` is the --port given."""
    script = tmp_path / "fake-python"
    script.write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --port ] && port=$2; shift; done\n' + body
    )
    script.chmod(0o755)
    return script
