"""`llmaas up`'s data directory, held by one run at a time.

Its private Redis keeps keys, tenants, jobs, files' records and usage there, in an append-only
file. Two runs on one directory (a second `make run` on another port, with the same default
directory) started two redis-servers appending to that one file, each with its own copy of the
data: what one wrote was lost at the other's next rewrite of the file, or both interleaved in
it. A run now holds a lock on the directory while it runs (released by the kernel however the
run ends, SIGKILL included), and a second run is refused at once, before anything starts,
naming the run that holds it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".llmaas-up.lock"  # in the data directory; it says who holds it


class DataDirInUse(RuntimeError):
    pass


@contextmanager
def held(data_dir: Path, holder: str) -> Iterator[None]:
    """Hold `data_dir` (made if missing) until the block is left; DataDirInUse when another
    run holds it. `holder` says who this run is (shown to a run refused)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK).open("a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            other = lock.read().strip() or "another process"
            raise DataDirInUse(
                f"the data directory {data_dir} is in use by another `llmaas up` ({other}): "
                "stop it, or give this one its own with --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{holder}, pid {os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
