"""`llmaas up`'s engine kept running (gateway/embedded/supervise.py): started again on its port
when it exits, its log kept, quick exits spaced out, a failed restart tried again, and nothing
of any of its runs left once the block is left. With the stand-in engine of fake_engine.py:
seconds, not minutes. The real engine killed under `llmaas up`: tests/e2e/test_up_e2e.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.engine import EngineSpec, EngineStartError
from gateway.embedded.supervise import restart_pause, supervised_engine
from gateway.netutil import free_port
from tests.e2e.fake_engine import fake_engine, group_processes


def server(tmp_path: Path) -> str:
    """A command that serves /health on the engine's port until stopped."""
    (tmp_path / "www").mkdir(exist_ok=True)
    (tmp_path / "www" / "health").write_text("ok")
    www = tmp_path / "www"
    return f'{sys.executable} -m http.server --bind 127.0.0.1 --directory {www} "$port"'


def serving(tmp_path: Path, *, before: str = "") -> str:
    """A fake engine's script: it notes its pid, says which run it is (`$run`), then `before`
    (which may end it its own way), then serves /health."""
    return (
        f"echo $$ >> {tmp_path / 'pids'}\n"
        f"run=$(wc -l < {tmp_path / 'pids'})\n"
        "echo run $run\n"
        f"{before}exec {server(tmp_path)}\n"
    )


def pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def spec(tmp_path: Path, python: Path) -> EngineSpec:
    return EngineSpec(python, tmp_path, "fake", free_port(), tmp_path / "logs" / "engine.log")


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def runs_reach(tmp_path: Path, url: str, count: int) -> None:
    async with asyncio.timeout(30):
        while len(pids(tmp_path)) < count or not await healthy(url):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_an_engine_that_is_killed_is_started_again_on_its_port(tmp_path: Path) -> None:
    engine = spec(tmp_path, fake_engine(tmp_path, serving(tmp_path)))
    async with supervised_engine(engine, pause=lambda _: 0.0) as url:
        assert url == engine.url
        [first] = pids(tmp_path)
        os.killpg(first, signal.SIGKILL)
        await runs_reach(tmp_path, url, 2)
        second = pids(tmp_path)[1]
        assert await group_processes(first) == []
        assert await group_processes(second)
        assert "run 1" in (tmp_path / "logs" / "engine.previous.log").read_text()
        assert "run 2" in engine.log_path.read_text()
    assert await group_processes(second) == []


async def test_quick_exits_are_spaced_out_and_a_failed_start_is_tried_again(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Run 1 serves until killed, run 2 fails to start, runs 3 and 4 exit 1.5 s after they
    start; each is started again, and the pause before each start is asked with the count
    of quick exits in a row."""
    before = (
        '[ "$run" = 2 ] && echo broken && exit 3\n'
        f'[ "$run" -ge 3 ] && exec timeout 1.5 {server(tmp_path)}\n'
    )
    script = serving(tmp_path, before=before)
    pauses: list[int] = []
    four = asyncio.Event()

    def pause(quick_exits: int) -> float:
        pauses.append(quick_exits)
        if len(pauses) == 4:
            four.set()
        return 0.0

    engine = spec(tmp_path, fake_engine(tmp_path, script))
    async with supervised_engine(engine, pause=pause) as url:
        os.killpg(pids(tmp_path)[0], signal.SIGKILL)
        await runs_reach(tmp_path, url, 3)
        await asyncio.wait_for(four.wait(), 30)
    assert pauses[:4] == [1, 2, 3, 4]
    said = capfd.readouterr().err
    assert "fake exited with status -9" in said
    assert "fake did not start again: engine fake exited with status 3" in said
    assert "fake exited with status 124" in said  # timeout's


async def test_a_first_start_that_fails_is_raised(tmp_path: Path) -> None:
    engine = spec(tmp_path, fake_engine(tmp_path, "echo 'no model here' >&2\nexit 3\n"))
    with pytest.raises(EngineStartError, match="no model here"):
        async with supervised_engine(engine):
            pytest.fail("never ready")


def test_the_pause_before_a_restart_doubles_up_to_a_minute() -> None:
    assert [restart_pause(n) for n in (1, 2, 3, 4, 5, 7, 8, 20)] == [0, 1, 2, 4, 8, 32, 60, 60]
