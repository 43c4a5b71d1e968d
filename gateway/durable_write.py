"""Bytes written to a file and made durable (fsync) before the call returns: the spill files
that keep usage settlements (metering/spill.py) and stored responses' homes
(api/homes_spill.py) across a stop while Redis is away."""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data: bytes, *, append: bool) -> None:
    """Write `data` to `path` (created 0600; appended to, or truncated first), whole, then
    fsync; raises OSError (a full disk)."""
    mode = os.O_APPEND if append else os.O_TRUNC
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (a full disk raises instead)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
