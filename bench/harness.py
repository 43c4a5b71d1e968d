"""Shared benchmark plumbing: start servers as subprocesses, drive load, summarise latencies."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.netutil import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (Linux /proc): unlike latency, barely
        moved by other processes competing for the same cores."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def process(
    args: list[str], health_url: str, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    """Run `python -m <args>` until the block ends; wait until `health_url` answers 200.
    Yields the process id."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        await wait_http_ok(health_url, timeout_s=30)
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def simulator(model: str) -> AsyncIterator[str]:
    port = free_port()
    args = ["gateway.sim.server", "--model", model, "--port", str(port)]
    async with process(args, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def gateway(config_text: str, tmp: Path) -> AsyncIterator[Server]:
    port = free_port()
    config = tmp / f"gateway-{port}.yaml"
    config.write_text(config_text)
    args = ["gateway", "serve", "--config", str(config), "--port", str(port)]
    async with process(args, f"http://127.0.0.1:{port}/healthz") as pid:
        yield Server(f"http://127.0.0.1:{port}", pid)


Call = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def drive(session: aiohttp.ClientSession, call: Call, total: int, concurrency: int) -> Result:
    """Send `total` calls with `concurrency` in flight; time each one."""
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call(session)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(total, time.perf_counter() - started, latencies)
