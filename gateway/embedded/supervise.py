"""`llmaas up`'s processes kept running: its vLLM engine and its private Redis are started again
whenever they exit while in use (the OOM killer, a crash), so `make run` does not go on
answering 503 with nothing behind it until someone restarts the whole stack.

Each exit is reported with the last lines of the process's log, which is kept beside the new
one (`engine-<port>.previous.log`, `redis.previous.log`). A process that exits again soon after
it came back waits a little longer each time before the next start (1, 2, 4 … up to 60 s), so
one that can never stay up does not spin the machine; a start that fails is retried the same
way. Only the first start's failure ends `llmaas up` (nothing would ever answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from gateway.embedded.engine import READY_TIMEOUT_S, EngineSpec, launched, log_tail, say

STABLE_S = 300.0  # up this long: its next exit starts the pauses from the beginning
MAX_PAUSE_S = 60.0

# One start of the process: entered once it is ready (it raises if it cannot start), the
# process is given, and leaving it stops the process (its whole group).
Launch = Callable[[], AbstractAsyncContextManager[asyncio.subprocess.Process]]


def restart_pause(quick_exits: int) -> float:
    """How long to wait before the next start, after that many exits in a row that came soon
    after a start: the first restart is at once."""
    return 0.0 if quick_exits <= 1 else min(2.0 ** (quick_exits - 2), MAX_PAUSE_S)


@asynccontextmanager
async def kept_running(
    name: str, launch: Launch, log_path: Path, *, pause: Callable[[int], float] = restart_pause
) -> AsyncIterator[None]:
    """Entered once the process is first ready (the first start's error is raised); it is
    started again each time it exits until the block is left, when it is stopped. `name`
    prefixes what is said about it ("[engine] smollm2-135m-instruct")."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    keeper = asyncio.create_task(_keep_running(name, launch, log_path, pause, ready))
    try:
        await asyncio.wait((keeper, ready), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            keeper.result()  # the first start's error
        yield
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


@asynccontextmanager
async def supervised_engine(
    spec: EngineSpec,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    pause: Callable[[int], float] = restart_pause,
) -> AsyncIterator[str]:
    """The engine's base URL once it is first ready, kept running as `kept_running` says."""

    @asynccontextmanager
    async def launch() -> AsyncIterator[asyncio.subprocess.Process]:
        async with launched(spec, timeout_s=timeout_s) as engine:
            yield engine.process

    async with kept_running(f"[engine] {spec.served_name}", launch, spec.log_path, pause=pause):
        yield spec.url


async def _keep_running(
    name: str,
    launch: Launch,
    log_path: Path,
    pause: Callable[[int], float],
    ready: asyncio.Future[None],
) -> None:
    quick_exits = 0
    while True:
        started = time.monotonic()
        try:
            async with launch() as process:
                if not ready.done():
                    ready.set_result(None)
                started = time.monotonic()
                status = await process.wait()
            why = f"exited with status {status} after {time.monotonic() - started:.0f}s"
        except Exception as exc:  # a start that failed: said, and tried again
            if not ready.done():
                raise
            why = f"did not start again: {str(exc).splitlines()[0]}"
        quick_exits = quick_exits + 1 if time.monotonic() - started < STABLE_S else 1
        wait_s = pause(quick_exits)
        tail = await asyncio.to_thread(log_tail, log_path, 10)
        kept = await asyncio.to_thread(_keep_log, log_path)
        then = f"starting it again in {wait_s:.0f}s" if wait_s else "starting it again"
        say(f"{name} {why}; {then} (its log: {kept}); last lines:\n{tail}")
        await asyncio.sleep(wait_s)


def _keep_log(log_path: Path) -> Path:
    """The log of the run that ended, moved aside: the next start writes a new one."""
    kept = log_path.with_name(f"{log_path.stem}.previous{log_path.suffix}")
    try:
        log_path.replace(kept)
    except OSError:
        return log_path
    return kept
