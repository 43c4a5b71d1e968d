"""`llmaas up`'s data directory is held by one run at a time: a second hold is refused naming
the first, and the directory is free again once the first lets go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.embedded.data_dir import LOCK, DataDirInUse, held


def test_a_held_directory_is_refused_naming_its_holder_until_let_go(tmp_path: Path) -> None:
    data = tmp_path / "made" / "redis"
    with held(data, "the one serving http://127.0.0.1:8080"):
        assert (
            data / LOCK
        ).read_text() == f"the one serving http://127.0.0.1:8080, pid {os.getpid()}\n"
        with pytest.raises(DataDirInUse) as refused, held(data, "the one serving :8081"):
            pass
    assert str(refused.value) == (
        f"the data directory {data} is in use by another `llmaas up` (the one serving "
        f"http://127.0.0.1:8080, pid {os.getpid()}): stop it, or give this one its own with "
        "--data-dir"
    )
    with held(data, "the next run"):  # let go: free again
        assert (data / LOCK).read_text().startswith("the next run, pid ")
