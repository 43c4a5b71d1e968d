"""What is left of a process group, as `ps` sees it: for tests that stop engines and servers."""

from __future__ import annotations

import asyncio


async def group_processes(pgid: int) -> list[str]:
    """Live (non-zombie) processes of the group, as `ps` lists them."""
    ps = await asyncio.create_subprocess_exec(
        "ps", "-ww", "-eo", "pgid=,stat=,args=", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await ps.communicate()
    rows = (line.split(None, 2) for line in out.decode().splitlines())
    return [" ".join(row) for row in rows if int(row[0]) == pgid and not row[1].startswith("Z")]
