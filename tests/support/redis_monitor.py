"""Record every command a real Redis runs (MONITOR), and group them into the units Redis
Cluster needs in one hash slot: commands, MULTI..EXEC blocks, scripts."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

_LINE = re.compile(r"^[\d.]+ \[\d+ ([^\]]+)\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}

Command = tuple[str, list[bytes]]  # (client, args)


def _unescape(text: str) -> bytes:
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1] == "x":
            out += bytes([int(text[i + 2 : i + 4], 16)])
            i += 4
        elif text[i] == "\\":
            out += _ESCAPES[text[i + 1]]
            i += 2
        else:
            out += text[i].encode()
            i += 1
    return bytes(out)


def parse_monitor_line(line: str) -> Command | None:
    match = _LINE.match(line)
    if match is None:
        return None
    return match.group(1), [_unescape(a) for a in _ARG.findall(match.group(2))]


@asynccontextmanager
async def monitoring(redis_url: str) -> AsyncIterator[list[Command]]:
    """Every command Redis runs meanwhile, scripts' inner commands under the client "lua"."""
    url = urlparse(redis_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"MONITOR\r\n")
    assert await reader.readline() == b"+OK\r\n"
    seen: list[Command] = []

    async def read() -> None:
        while line := await reader.readline():
            parsed = parse_monitor_line(line.decode().removeprefix("+").rstrip("\r\n"))
            if parsed is not None:
                seen.append(parsed)

    reading = asyncio.create_task(read())
    try:
        yield seen
    finally:
        await asyncio.sleep(0.2)  # the last lines are on their way
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        writer.close()


def groups(commands: list[Command]) -> list[list[list[bytes]]]:
    """Units that must be single-slot: each command; each MULTI..EXEC of one client; each run of
    a script's inner commands (scripts are atomic, so their lines come together)."""
    units: list[list[list[bytes]]] = []
    open_multi: dict[str, list[list[bytes]]] = defaultdict(list)
    in_multi: set[str] = set()
    script: list[list[bytes]] = []
    for client, args in commands:
        if client != "lua" and script:
            units.append(script)
            script = []
        name = args[0].upper() if args else b""
        if client == "lua":
            script.append(args)
        elif name == b"MULTI":
            in_multi.add(client)
        elif name in (b"EXEC", b"DISCARD") and client in in_multi:
            units.append(open_multi.pop(client, []))
            in_multi.discard(client)
        elif client in in_multi:
            open_multi[client].append(args)
        else:
            units.append([args])
    if script:
        units.append(script)
    return units
