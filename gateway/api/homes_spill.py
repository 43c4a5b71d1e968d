"""Homes of stored responses still waiting for Redis when a process stops, kept on disk for
the next start (gateway/api/response_homes.py): the client was answered 200 with the response
and its engine still holds it, so a restart while Redis is away must not make it a 404 for good.

They live in `<metering.spill_dir>/response-homes/`, one file per stopping process, each line
JSON `[tenant, response id, model, engine URL, expiry (Unix time)]` (a waiting delete: model
and engine ""). A file is written under a temporary name and renamed, so one a starting process
sees is whole; a starting process takes a file by renaming it to a name of its own (two taking
at once: one wins), reads it and removes it: its homes then wait in that process's memory, which
writes them to Redis once Redis takes writes, or to a file again when it stops first.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.durable_write import write_durably

_LOG = logging.getLogger("llmaas.responses")
SUBDIR = "response-homes"  # under metering.spill_dir (the settler's files are *.jsonl beside it)


@dataclass(frozen=True, slots=True)
class SpilledHome:
    tenant: str
    response_id: str
    model: str
    engine: str
    expires: float  # Unix time: a process's monotonic clock means nothing to the next one


def write_homes(directory: Path, homes: Sequence[SpilledHome]) -> Path:
    """Write `homes` to a new file of this process, durably (fsync); raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"homes-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
    partial = directory / f".{name}.part"
    lines = (
        orjson.dumps([h.tenant, h.response_id, h.model, h.engine, h.expires]) + b"\n" for h in homes
    )
    write_durably(partial, b"".join(lines), append=False)
    return partial.rename(directory / name)


def take_homes(directory: Path) -> list[SpilledHome]:
    """The homes of every file stopped processes left here; each file is taken by one process
    and removed once read. Raises OSError (the directory unreadable)."""
    if not directory.is_dir():
        return []
    homes: list[SpilledHome] = []
    for file in sorted(directory.glob("homes-*.jsonl")):
        taken = directory / f"taking-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        try:
            file.rename(taken)
        except FileNotFoundError:  # another process took it first
            continue
        homes.extend(_read(taken))
        taken.unlink()
    return homes


def _read(file: Path) -> list[SpilledHome]:
    homes: list[SpilledHome] = []
    for number, line in enumerate(file.read_bytes().splitlines(), 1):
        try:
            tenant, response_id, model, engine, expires = orjson.loads(line)
            homes.append(
                SpilledHome(str(tenant), str(response_id), str(model), str(engine), float(expires))
            )
        except (ValueError, TypeError):
            _LOG.error(
                "unreadable response home skipped",
                extra={"fields": {"file": str(file), "line": number}},
            )
    return homes
