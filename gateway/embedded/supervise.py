"""`llmaas up`'s engine kept running: started as `running_engine` starts it, and started again
whenever it exits while in use (the OOM killer, a crash), so `make run` does not go on
answering 503 with no engine behind it until someone restarts the whole stack.

Each exit is reported with the last lines of the engine's log, which is kept beside the new one
(`engine-<port>.previous.log`). An engine that exits again soon after it came back waits a
little longer each time before the next start (1, 2, 4 … up to 60 s), so an engine that can
never stay up does not spin the machine; a start that fails is retried the same way. Only the
first start's failure ends `llmaas up` (nothing would ever answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.embedded.engine import (
    READY_TIMEOUT_S,
    EngineSpec,
    EngineStartError,
    launched,
    log_tail,
    say,
)

STABLE_S = 300.0  # up this long: its next exit starts the pauses from the beginning
MAX_PAUSE_S = 60.0


def restart_pause(quick_exits: int) -> float:
    """How long to wait before the next start, after that many exits in a row that came soon
    after a start: the first restart is at once."""
    return 0.0 if quick_exits <= 1 else min(2.0 ** (quick_exits - 2), MAX_PAUSE_S)


@asynccontextmanager
async def supervised_engine(
    spec: EngineSpec,
    *,
    timeout_s: float = READY_TIMEOUT_S,
    pause: Callable[[int], float] = restart_pause,
) -> AsyncIterator[str]:
    """The engine's base URL once it is first ready; it is started again each time it exits
    until the block is left, when it is stopped (its whole process group) as `launched` does."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    keeper = asyncio.create_task(_keep_running(spec, timeout_s, pause, ready))
    try:
        await asyncio.wait((keeper, ready), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            keeper.result()  # the first start's EngineStartError
        yield spec.url
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def _keep_running(
    spec: EngineSpec, timeout_s: float, pause: Callable[[int], float], ready: asyncio.Future[None]
) -> None:
    quick_exits = 0
    while True:
        started = time.monotonic()
        try:
            async with launched(spec, timeout_s=timeout_s) as engine:
                if not ready.done():
                    ready.set_result(None)
                started = time.monotonic()
                status = await engine.process.wait()
            why = f"exited with status {status} after {time.monotonic() - started:.0f}s"
        except EngineStartError as exc:
            if not ready.done():
                raise
            why = f"did not start again: {str(exc).splitlines()[0]}"
        quick_exits = quick_exits + 1 if time.monotonic() - started < STABLE_S else 1
        wait_s = pause(quick_exits)
        tail = await asyncio.to_thread(log_tail, spec.log_path, 10)
        kept = await asyncio.to_thread(_keep_log, spec.log_path)
        then = f"starting it again in {wait_s:.0f}s" if wait_s else "starting it again"
        say(f"[engine] {spec.served_name} {why}; {then} (its log: {kept}); last lines:\n{tail}")
        await asyncio.sleep(wait_s)


def _keep_log(log_path: Path) -> Path:
    """The log of the run that ended, moved aside: the next start writes a new one."""
    kept = log_path.with_name(f"{log_path.stem}.previous{log_path.suffix}")
    try:
        log_path.replace(kept)
    except OSError:
        return log_path
    return kept
