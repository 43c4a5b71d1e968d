"""A vLLM engine as a child process: started in its own process group, waited for with visible
progress, and stopped as a whole (vLLM forks an EngineCore and a resource tracker)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.embedded.model import OFFLINE

ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU (~23k tokens for SmolLM2)
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    **OFFLINE,
}
STOP_GRACE_S = 15.0


class EngineStartError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class EngineSpec:
    python: Path
    model_dir: Path
    served_name: str
    port: int
    log_path: Path
    pooling: bool = False  # embeddings models

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        argv = [str(self.python), "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", str(self.model_dir), "--served-model-name", self.served_name]
        argv += ["--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port)]
        return [*argv, "--runner", "pooling"] if self.pooling else argv


@asynccontextmanager
async def running_engine(spec: EngineSpec, *, timeout_s: float = 600) -> AsyncIterator[str]:
    """Start the engine, wait until /health answers, yield its base URL, stop it on exit."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *spec.command(),
            stdout=log,
            stderr=log,
            env={**os.environ, **ENGINE_ENV},
            start_new_session=True,
        )
    try:
        await _wait_ready(spec, proc, timeout_s)
        yield spec.url
    finally:
        await stop_process_group(proc)


async def _wait_ready(spec: EngineSpec, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    started = time.monotonic()
    last_report = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            elapsed = time.monotonic() - started
            if proc.returncode is not None:
                raise EngineStartError(
                    f"engine {spec.served_name} exited with {proc.returncode} while starting; "
                    f"last lines of {spec.log_path}:\n{log_tail(spec.log_path, 25)}"
                )
            if await _healthy(http, spec.url):
                print(
                    f"[engine] {spec.served_name} ready on {spec.url} after {elapsed:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                return
            if elapsed > timeout_s:
                raise EngineStartError(
                    f"engine {spec.served_name} not ready after {timeout_s:.0f}s"
                )
            if elapsed - last_report >= 5:
                last_report = elapsed
                line = log_tail(spec.log_path, 1)[-110:]
                print(
                    f"[engine] waiting for {spec.served_name} ({elapsed:.0f}s): {line}",
                    file=sys.stderr,
                    flush=True,
                )
            await asyncio.sleep(0.5)


async def _healthy(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/health") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def log_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


async def stop_process_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's whole process group, then SIGKILL whatever is left after a grace."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), wait)
        except TimeoutError:
            continue
        await _reap_group(proc.pid, wait)
        return


async def _reap_group(pgid: int, wait: float) -> None:
    """The leader exited; make sure no member of its group (EngineCore) outlives it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
