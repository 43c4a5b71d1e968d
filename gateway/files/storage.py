"""Where file contents live: one small interface, and a directory behind it.

On a cluster the directory is a ReadWriteMany volume shared by the gateway, the trainer and the
engines, so a trainer reads a dataset, and an engine loads an adapter, by path. Contents are
written to a temporary name and renamed into place once whole and checked: a reader never sees
half a file, and an upload that fails leaves nothing behind.

Uploads in progress are the tenant's `.*.part` files: counted against its bytes (on any
replica, the volume being shared), and, once untouched for STALE_PART_S (or twice
keep_alive_s, if longer), removed (a gateway that stopped mid-upload left them on the volume
for good; a live upload writes at least every keep_alive_s, or is cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHUNK = 256 * 1024
_PART = re.compile(r"^\..+\.[0-9a-f]{8}\.part$")  # _DirectoryPartial's names
STALE_PART_S = 600.0


def stale_part_s(keep_alive_s: float) -> float:
    """How long a part file is left untouched before it is taken for a stopped upload's."""
    return max(STALE_PART_S, 2 * keep_alive_s)


class PartialFile(Protocol):
    """Contents being written: whole at `path` after `finish` (to be checked there), visible
    under their name only after `commit`."""

    size: int
    path: Path

    async def write(self, data: bytes) -> None: ...
    async def finish(self) -> None: ...
    async def commit(self) -> None: ...
    async def discard(self) -> None: ...


class Contents:
    """A file opened for reading: its size, then its chunks; closed once read to the end (or
    by `close`, which may be called again)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(self.handle.read, CHUNK):
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self.handle.close()


class FileStorage(Protocol):
    def create(self, tenant: str, name: str) -> PartialFile: ...
    def path(self, tenant: str, name: str) -> Path: ...
    async def open(self, tenant: str, name: str) -> Contents: ...
    async def delete(self, tenant: str, name: str) -> None: ...
    async def uploading(self, tenant: str, but: PartialFile, stale_s: float) -> int: ...


class DirectoryStorage:
    """`<root>/<tenant>/<name>`; names are checked, so no path can leave the root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, tenant: str, name: str) -> Path:
        if not (_NAME.match(tenant) and _NAME.match(name)):
            raise ValueError(f"not a storage name: {tenant!r}/{name!r}")
        return self.root / tenant / name

    def create(self, tenant: str, name: str) -> PartialFile:
        return _DirectoryPartial(self.path(tenant, name))

    async def open(self, tenant: str, name: str) -> Contents:
        """Open the contents before anything is answered: a file that is gone, or storage that
        cannot be read, raises OSError here, not halfway through a response."""
        handle = await asyncio.to_thread(self.path(tenant, name).open, "rb")
        try:
            return Contents(handle)
        except BaseException:
            handle.close()
            raise

    async def delete(self, tenant: str, name: str) -> None:
        await asyncio.to_thread(self.path(tenant, name).unlink, missing_ok=True)

    async def uploading(self, tenant: str, but: PartialFile, stale_s: float) -> int:
        """The bytes the tenant's other uploads in progress hold so far (those of every
        replica); their part files untouched for `stale_s` are removed instead (or, where
        they cannot be, passed over)."""
        directory = self.path(tenant, "x").parent
        return await asyncio.to_thread(self._uploading, directory, but.path, stale_s)

    def remove_stale_parts(self, stale_s: float) -> int:
        """Every tenant's part files untouched for `stale_s` removed (blocking: run it in a
        thread); how many were. An upload looks at its own tenant's only (`uploading`): a
        tenant that never uploaded again kept the part a stopped gateway left for good."""
        try:
            tenants = [e.path for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:  # no upload yet, or storage unavailable: the next sweep looks again
            return 0
        return sum(self._parts(Path(t), None, stale_s)[1] for t in tenants)

    @staticmethod
    def _uploading(directory: Path, own: Path, stale_s: float) -> int:
        return DirectoryStorage._parts(directory, own, stale_s)[0]

    @staticmethod
    def _parts(directory: Path, own: Path | None, stale_s: float) -> tuple[int, int]:
        """The bytes the part files in `directory` but `own` hold, and how many of those
        untouched for `stale_s` were removed instead (a gateway that stopped mid-upload left
        them; a read-only volume keeps them, not counted)."""
        held = removed = 0
        stale_before = time.time() - stale_s
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:  # no file yet
            return 0, 0
        for entry in entries:
            if not _PART.match(entry.name) or (own is not None and entry.path == str(own)):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # committed or discarded meanwhile
                continue
            if stat.st_mtime < stale_before:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
                continue
            held += stat.st_size
        return held, removed


def bytes_under(path: Path) -> int:
    """The bytes of the files under `path` (a fine-tuned model's adapter directory)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _DirectoryPartial:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        self.size = 0
        self.handle: BinaryIO | None = None

    async def write(self, data: bytes) -> None:
        if self.handle is None:
            self.handle = await asyncio.to_thread(self._open)
        await asyncio.to_thread(self.handle.write, data)
        self.size += len(data)

    def _open(self) -> BinaryIO:
        """Files for the owner only (0600): a tenant's data is no local user's. Directories
        0711: the engines (root without capabilities, in the chart) go through them to the
        adapters the trainer writes, and list none."""
        self.path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        return os.fdopen(fd, "wb")

    async def finish(self) -> None:
        if self.handle is None:  # nothing was written: an empty file
            self.handle = await asyncio.to_thread(self._open)
        await asyncio.to_thread(self._sync_and_close, self.handle)

    @staticmethod
    def _sync_and_close(handle: BinaryIO) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    async def commit(self) -> None:
        await asyncio.to_thread(self.path.replace, self.final)

    async def discard(self) -> None:
        if self.handle is None:  # never opened: nothing was written
            return
        if not self.handle.closed:
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path.unlink)
