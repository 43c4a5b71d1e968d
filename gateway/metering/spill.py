"""Spill files: settlements Redis could not take, kept on disk until a gateway replays them.

Each process appends to its own file, opening it per write so a file is never held open. A
file's name says which ledger its settlements belong to, and who wrote it:

  spill-<ledger>-<pid>-<life>.jsonl           written by a process (life: one run of a pid)
  replay-<ledger>-<pid>-<life>-<rand>.jsonl   claimed by a process, being replayed

<ledger> is the ledger's id (`llmaas:ledger:id` in Redis), or `unknown@<host:port/db>` when the
writer had not reached its Redis yet. A process replays its own spill file whatever it says (the
settlements in it would have gone where its queue goes), and otherwise only files of its own
ledger whose writer is gone, claimed by renaming so nothing is read while still being written.
Files of another ledger, of an unknown one and of older versions (no ledger in the name) are
never replayed nor deleted here: they are reported. Replay deletes a file only after all of it
reached Redis; writing is idempotent, so a file replayed twice counts once.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from gateway.durable_write import write_durably
from gateway.metering.settlement import Settlement

_LOG = logging.getLogger("llmaas.metering")
UNKNOWN = "unknown@"  # the ledger tag's prefix when the writer knew only where its Redis was
_PARTS = {"spill": 4, "replay": 5}  # fields of a name, split on "-" (tags escape theirs)


def _escape(text: str) -> str:
    return quote(text, safe="").replace("-", "%2D")


@dataclass(frozen=True, slots=True)
class SpillName:
    """What a file's name says; `ledger` is None when unknown (or an old-format name)."""

    kind: str  # "spill", "replay", or "" for a name this version did not write
    ledger: str | None
    redis: str | None = None  # where the writer's Redis was, when it did not know the ledger
    pid: int = -1
    life: str = ""


def spill_tag(ledger: str | None, redis: str) -> str:
    return _escape(ledger) if ledger is not None else UNKNOWN + _escape(redis)


def parse_name(name: str) -> SpillName:
    parts = name.removesuffix(".jsonl").split("-")
    if _PARTS.get(parts[0]) != len(parts) or not name.endswith(".jsonl"):
        return SpillName("", None)
    kind, tag, pid, life = parts[:4]
    try:
        number = int(pid)
    except ValueError:
        return SpillName("", None)
    if tag.startswith(UNKNOWN):
        return SpillName(kind, None, unquote(tag.removeprefix(UNKNOWN)), number, life)
    return SpillName(kind, unquote(tag), None, number, life)


@dataclass(frozen=True, slots=True)
class ForeignFile:
    """A spill file this process will not replay, and how many settlements it holds."""

    path: Path
    name: SpillName
    records: int


class SpillDir:
    """Callers serialise `append` and `claim` (the settler holds a lock around both)."""

    def __init__(self, path: Path, redis: str) -> None:
        self.path = path
        self.redis = redis  # host:port/db of this process's ledger, no password
        self.ledger: str | None = None  # its id, once Redis told it
        self.pid = os.getpid()
        self.life = secrets.token_hex(4)  # tells this process from an earlier one with its pid
        # Foreign files' settlements counted, by name, with the size and mtime counted at: a
        # file left in place is read again only when it changed (replay passes look often).
        self._counted: dict[str, tuple[int, int, int]] = {}

    @property
    def own(self) -> Path:
        """The file `append` writes to now (its name changes once the ledger is known)."""
        return (
            self.path / f"spill-{spill_tag(self.ledger, self.redis)}-{self.pid}-{self.life}.jsonl"
        )

    def append(self, settlements: Sequence[Settlement]) -> None:
        """Write settlements to this process's spill file and make them durable (fsync).
        Each write begins a line of its own: one that failed halfway (a full disk) left a torn
        line, which the next write's first settlement joined, and both were lost as one
        unreadable line. (What the failed write held is written again from memory; a
        settlement that reached the file twice is applied once.)"""
        self.path.mkdir(parents=True, exist_ok=True)
        data = b"\n" + b"".join(s.to_json() + b"\n" for s in settlements)
        write_durably(self.own, data, append=True)

    def claim(self) -> list[tuple[Path, bool]]:
        """Take over our own spill files and those of gone processes of our ledger, by renaming
        them to replay files (which carry our ledger); also replay files whose claimer died
        before finishing them. Each comes with whether it was this process's own spill file.
        Nothing is claimed before the ledger is known."""
        if self.ledger is None or not self.path.is_dir():
            return []
        claimed: list[tuple[Path, bool]] = []
        for file in sorted(self.path.glob("*.jsonl")):
            name = parse_name(file.name)
            own = self._ours(name)
            if own and name.kind != "spill":
                continue  # one of our replay files: being replayed already
            if not own and (name.ledger != self.ledger or not self._gone(name)):
                continue
            tag = spill_tag(self.ledger, self.redis)
            target = self.path / f"replay-{tag}-{self.pid}-{self.life}-{secrets.token_hex(4)}.jsonl"
            try:
                file.rename(target)
            except FileNotFoundError:  # another process claimed it first
                continue
            claimed.append((target, own))
        return claimed

    def foreign(self) -> list[ForeignFile]:
        """Files this process will never replay: another ledger's, an unknown ledger's whose
        writer is gone (a live one may still learn its ledger), and old-format ones. Empty until
        this process knows its own ledger."""
        if self.ledger is None:
            return []
        found: list[ForeignFile] = []
        for file in self.pending_files():
            name = parse_name(file.name)
            if self._ours(name) or name.ledger == self.ledger:
                continue
            if name.ledger is None and name.kind and not self._gone(name):
                continue
            try:
                found.append(ForeignFile(file, name, self._count(file)))
            except FileNotFoundError:  # claimed or removed meanwhile
                continue
        names = {f.path.name for f in found}
        self._counted = {k: v for k, v in self._counted.items() if k in names}
        return found

    def _count(self, file: Path) -> int:
        stat = file.stat()
        known = self._counted.get(file.name)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        count = count_lines(file)
        self._counted[file.name] = (stat.st_size, stat.st_mtime_ns, count)
        return count

    def pending_files(self) -> list[Path]:
        return sorted(self.path.glob("*.jsonl")) if self.path.is_dir() else []

    def _ours(self, name: SpillName) -> bool:
        return name.pid == self.pid and name.life == self.life

    def _gone(self, name: SpillName) -> bool:
        """Whether the process that wrote or claimed the file is gone (pid 0: no process)."""
        if name.pid <= 0:
            return True
        if name.pid == self.pid:
            return name.life != self.life
        try:
            os.kill(name.pid, 0)
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
