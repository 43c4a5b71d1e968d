"""Spill files: settlements Redis could not take, kept on disk until a gateway replays them.

Each process appends to its own file (`spill-<pid>-<token>.jsonl`), opening it per write so a
file is never held open. A process claims another's file, by renaming it, only when that
process is gone (or is a previous life of its own pid), so nothing is read while still being
written. Replay deletes a file only after all of it reached Redis; writing is idempotent, so a
file replayed twice counts once.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.metering.settlement import Settlement

_LOG = logging.getLogger("llmaas.metering")


class SpillDir:
    """Callers serialise `append` and `claim` (the settler holds a lock around both)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.life = secrets.token_hex(4)  # tells this process from an earlier one with its pid
        self.own = path / f"spill-{self.pid}-{self.life}.jsonl"

    def append(self, settlements: Sequence[Settlement]) -> None:
        """Write settlements to this process's spill file and make them durable (fsync)."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = b"".join(s.to_json() + b"\n" for s in settlements)
        fd = os.open(self.own, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a full disk raises instead)
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def claim(self) -> list[tuple[Path, bool]]:
        """Take over our own spill file and those of processes that are gone, by renaming them
        to replay files; also replay files whose claimer died before finishing them. Each comes
        with whether it was this process's own spill file."""
        if not self.path.is_dir():
            return []
        claimed: list[tuple[Path, bool]] = []
        for file in sorted(self.path.glob("*.jsonl")):
            own = file == self.own
            if not own and not self._orphaned(file):
                continue
            target = self.path / f"replay-{self.pid}-{self.life}-{secrets.token_hex(4)}.jsonl"
            try:
                file.rename(target)
            except FileNotFoundError:  # another process claimed it first
                continue
            claimed.append((target, own))
        return claimed

    def pending_files(self) -> list[Path]:
        return sorted(self.path.glob("*.jsonl")) if self.path.is_dir() else []

    def _orphaned(self, file: Path) -> bool:
        """Whether the process that wrote or claimed `file` is gone."""
        parts = file.name.split("-")
        try:
            pid, life = int(parts[1]), parts[2].removesuffix(".jsonl")
        except (IndexError, ValueError):
            return True
        if pid == self.pid:
            return life != self.life
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def read_spill(file: Path, batch: int) -> Iterator[list[Settlement]]:
    """The settlements of a spill file, in batches; a torn last line (a crash) is skipped."""
    chunk: list[Settlement] = []
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                chunk.append(Settlement.from_json(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                _LOG.error(
                    "unreadable spill line skipped",
                    extra={"fields": {"file": str(file), "line": number}},
                )
                continue
            if len(chunk) >= batch:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def count_lines(file: Path) -> int:
    with file.open("rb") as lines:
        return sum(1 for line in lines if line.strip())
