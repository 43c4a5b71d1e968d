"""The part files of uploads a stopped gateway left, removed on every tenant's storage: an
upload removes only its own tenant's (storage.DirectoryStorage.uploading), so a tenant that
never uploaded again kept one for good. Every replica sweeps; two removing the same file is
harmless (the second finds it gone)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.files.storage import DirectoryStorage

log = logging.getLogger("llmaas.files")


async def sweep_stale_parts(root: Path, stale_s: float) -> None:
    """At start, then every half of `stale_s`, until cancelled."""
    storage = DirectoryStorage(root)
    while True:
        removed = await asyncio.to_thread(storage.remove_stale_parts, stale_s)
        if removed:
            fields = {"removed": removed, "untouched_s": stale_s}
            log.info("stale upload part files removed", extra={"fields": fields})
        await asyncio.sleep(stale_s / 2)
