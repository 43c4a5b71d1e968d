"""Simulator engines as `llmaas sim` processes (the installed entry point), killable at will."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from gateway.netutil import free_port, wait_http_ok
from tests.support.cli import llmaas


def port_free_on(*hosts: str) -> int:
    """A port free on every one of `hosts` (loopback addresses such as 127.0.0.2)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


@dataclass(slots=True)
class SimProcess:
    """`llmaas sim --model … --host H --port P`; start() again after kill() on the same port."""

    models: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        args = [f"--model={m}" for m in self.models]
        self.process = await asyncio.create_subprocess_exec(
            llmaas(), "sim", *args, f"--host={self.host}", f"--port={self.port}"
        )
        await wait_http_ok(f"{self.url}/health", timeout_s=30, interval_s=0.05)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


@asynccontextmanager
async def sim_processes(*sims: SimProcess) -> AsyncIterator[tuple[SimProcess, ...]]:
    try:
        await asyncio.gather(*(sim.start() for sim in sims))
        yield sims
    finally:
        for sim in sims:
            if sim.process is not None and sim.process.returncode is None:
                sim.process.terminate()
                await asyncio.wait_for(sim.process.wait(), 30)
