"""`llmaas up`'s data directory: what a run keeps for the next, held by one run at a time.

It holds the private Redis's data (keys, tenants, jobs, files' records and usage, in an
append-only file) under redis/, the uploaded files and fine-tuned adapters under files/, the
engine's log under logs/, and the development key and admin token in credentials.json. By
default it is the home (~/.cache/llmaas), beside the caches (engine venv, models);
`--data-dir DIR` moves all of it, not just Redis's part (until 2026-12-05 the files and logs
stayed under the home, and each run left a new engine-<port>.log there).

Two runs on one directory (a second `make run` on another port, with the same default
directory) started two redis-servers appending to one file, each with its own copy of the
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
from dataclasses import dataclass
from pathlib import Path

LOCK = ".llmaas-up.lock"  # in the data directory; it says who holds it
# What Redis wrote straight into --data-dir before it had a redis/ of its own (2026-12-05).
EARLIER_REDIS_DATA = ("appendonly.aof", "appendonlydir", "dump.rdb")  # Redis 6, 7, both


class DataDirInUse(RuntimeError):
    pass


class DataDirLayoutError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DataDir:
    root: Path

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def files(self) -> Path:
        """Uploads and fine-tuned adapters (<files>/<tenant>/<id>), which Redis's records name."""
        return self.root / "files"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def credentials(self) -> Path:
        """The development key and admin token, shown again at each run (dev_credentials.py)."""
        return self.root / "credentials.json"

    def engine_log(self, gateway_port: int) -> Path:
        """Named after the gateway's port, which two runs sharing one directory (a shared
        Redis) never share, and which does not change from one run to the next."""
        return self.logs / f"engine-{gateway_port}.log"

    def check_layout(self) -> None:
        """DataDirLayoutError when Redis's data sits in the root, where `--data-dir` kept it
        until 2026-12-05: started on, Redis would begin empty beside it."""
        found = [name for name in EARLIER_REDIS_DATA if (self.root / name).exists()]
        if found and not self.redis.exists():
            raise DataDirLayoutError(
                f"{self.root} holds Redis data as `llmaas up` kept it until 2026-12-05 "
                f"({', '.join(found)} in it): move {' and '.join(found)} into "
                f"{self.redis}/ (and the home's files/, its uploads and adapters, into "
                f"{self.files}/), then start again"
            )


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
