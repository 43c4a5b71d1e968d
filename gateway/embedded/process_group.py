"""Child processes started in their own process group and stopped as a whole group (or, a
single process, alone: stop_process).

vLLM's API server forks an EngineCore and a resource tracker; stopping only the leader would
orphan them. Every member of the group gets SIGTERM, then SIGKILL after a grace period.

A parent that is SIGKILLed runs none of that, so children are also started with a
parent-death signal (Linux): the kernel sends them SIGTERM when their parent dies, and they
shut down as if it had stopped them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def terminated_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for child processes: SIGTERM them when this process dies, however it dies.

    Does nothing where `prctl` is missing (not Linux). If this process died between the fork
    and the call, the child terminates itself at once.
    """
    parent = os.getpid()
    prctl = _prctl()  # looked up before the fork: the child only calls it

    def in_child() -> None:
        _terminate_with(prctl, parent)

    return in_child


def terminate_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Called in a child process (one started by `multiprocessing`, say): send it `sig` when
    `parent`, the process that started it, dies, however it dies; at once if it already has.
    Does nothing where `prctl` is missing (not Linux)."""
    _terminate_with(_prctl(), parent, sig)


def _prctl() -> Callable[..., int] | None:
    return getattr(ctypes.CDLL(None), "prctl", None)  # this process's symbols: libc's, if Linux


def _terminate_with(
    prctl: Callable[..., int] | None, parent: int, sig: signal.Signals = signal.SIGTERM
) -> None:
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that still run (zombies excluded: they hold no resources)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid] if _signal_group(pgid, 0) else []
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ..." — comm may hold spaces, so split after ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it exists any more."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies left (macOS answers EPERM for those)
        return False
    return True


async def _group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(live_members, pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def stop_process(child: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    """SIGTERM one child, wait up to `grace_s`, then SIGKILL it (a process of its own, with
    no group to stop: a trainer's training run)."""
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await child.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


@asynccontextmanager
async def group_stopped_if_cut(proc: asyncio.subprocess.Process) -> AsyncIterator[None]:
    """Around the wait for `proc` (started with `start_new_session=True`): if the wait is cut
    (cancelled: `llmaas up` stopped while it prepared) or fails, its whole group is stopped
    first. The parent-death signal reaches `proc` alone: a step cut short left its children
    running (`python -m venv` runs ensurepip, which runs pip: they went on installing)."""
    try:
        yield
    except BaseException:
        await stop_process_group(proc)
        raise


async def stop_process_group(
    proc: asyncio.subprocess.Process, grace_s: float = STOP_GRACE_S
) -> None:
    """SIGTERM the child's whole group, wait up to `grace_s`, then SIGKILL what is left.

    The child must have been started with `start_new_session=True` (its pid is the group id).
    """
    pgid = proc.pid
    if _signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
        remaining = max(0.0, deadline - time.monotonic())
        if not await _group_gone(pgid, remaining):
            _signal_group(pgid, signal.SIGKILL)
            await _group_gone(pgid, KILL_WAIT_S)
    await proc.wait()
