"""Launching engines: ready when /health answers, a fast and readable failure when the engine
dies while starting, and no process of its group left once it is stopped.

These use a stand-in for the engine's python (a shell script that serves /health and forks a
child, as vLLM forks its EngineCore) and run in seconds. The real vLLM engine's whole group is
checked gone once stopped in tests/e2e/test_up_e2e.py (`llmaas up`'s clean stop).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.engine import EngineStartError, start_engine
from gateway.embedded.process_group import stop_process_group
from gateway.netutil import free_port
from tests.e2e.fake_engine import fake_engine, group_processes


async def test_engine_is_ready_when_health_answers_and_its_whole_group_stops(
    tmp_path: Path,
) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok")
    python = fake_engine(
        tmp_path,
        "echo fake engine loading\n"
        "sleep 600 &\n"  # a child that must not outlive the engine, like vLLM's EngineCore
        f"exec {sys.executable} -m http.server --bind 127.0.0.1"
        f' --directory {tmp_path / "www"} "$port"\n',
    )
    log = tmp_path / "engine.log"
    async with start_engine(python, tmp_path, "fake", free_port(), log_path=log) as engine:
        async with aiohttp.ClientSession() as http, http.get(f"{engine.url}/health") as resp:
            assert resp.status == 200
        assert len(await group_processes(engine.pgid)) == 2
    assert await group_processes(engine.pgid) == []
    assert "fake engine loading" in log.read_text()


async def test_engine_that_exits_while_starting_fails_fast_with_its_log(tmp_path: Path) -> None:
    python = fake_engine(tmp_path, "echo 'ValueError: no config.json in /nowhere' >&2\nexit 3\n")
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="exited with status 3") as raised:
        async with start_engine(python, tmp_path, "x", free_port(), log_path=tmp_path / "l"):
            pytest.fail("the engine cannot be ready")
    assert "no config.json in /nowhere" in str(raised.value)
    assert time.monotonic() - started < 5


async def test_engine_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    python = fake_engine(tmp_path, f"echo $$ > {pid_file}\necho still loading\nexec sleep 600\n")
    log = tmp_path / "engine.log"
    with pytest.raises(EngineStartError, match="did not answer") as raised:
        async with start_engine(python, tmp_path, "x", free_port(), log_path=log, timeout_s=1):
            pytest.fail("the engine cannot be ready")
    assert "still loading" in str(raised.value)
    assert await group_processes(int(pid_file.read_text())) == []


async def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = "trap '' TERM; sleep 600 & sleep 600; wait"  # a child too, as TERM-deaf
    proc = await asyncio.create_subprocess_exec("sh", "-c", stubborn, start_new_session=True)
    await asyncio.sleep(0.3)
    assert len(await group_processes(proc.pid)) == 3
    started = time.monotonic()
    await stop_process_group(proc, grace_s=0.5)
    assert await group_processes(proc.pid) == []
    assert 0.5 <= time.monotonic() - started < 5
