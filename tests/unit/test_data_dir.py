"""`llmaas up`'s data directory holds all a run keeps (Redis's data, files, engine logs), and is
held by one run at a time: a second hold is refused naming the first, and the directory is free
again once the first lets go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.embedded.data_dir import LOCK, DataDir, DataDirInUse, DataDirLayoutError, held


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


def test_everything_a_run_keeps_is_under_the_data_directory(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.redis == tmp_path / "redis"
    assert data.files == tmp_path / "files"
    # Named after the gateway's port, not the engine's (a free port: a new log every run).
    assert data.engine_log(8080) == tmp_path / "logs" / "engine-8080.log"
    data.check_layout()  # empty: nothing in the way


@pytest.mark.parametrize("earlier", ["appendonly.aof", "appendonlydir", "dump.rdb"])
def test_redis_data_kept_in_the_root_as_before_is_refused_saying_where_it_goes(
    tmp_path: Path, earlier: str
) -> None:
    """Started on, Redis would begin empty in redis/ beside the data, every key and job gone
    from view."""
    (tmp_path / earlier).mkdir()
    with pytest.raises(DataDirLayoutError) as refused:
        DataDir(tmp_path).check_layout()
    assert str(refused.value) == (
        f"{tmp_path} holds Redis data as `llmaas up` kept it until 2026-12-05 ({earlier} in it):"
        f" move {earlier} into {tmp_path}/redis/ (and the home's files/, its uploads and "
        f"adapters, into {tmp_path}/files/), then start again"
    )
    (tmp_path / "redis").mkdir()  # moved (or a redis/ of its own already): no longer refused
    DataDir(tmp_path).check_layout()
