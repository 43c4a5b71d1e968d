"""`llmaas serve` as real processes, for tests that need several gateways or a killed one."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.netutil import free_port, wait_http_ok

ADMIN_TOKEN = "test-admin-token-0123456789"
PEPPER = "test-pepper-0123456789abcdef"


def serve_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args]


def shared_config(path: Path, *, redis_url: str, model: str, sim: str, extra: str = "") -> Path:
    """A config several gateways can share: one Redis, keys on, one model on the simulator."""
    path.write_text(
        f"redis_url: {redis_url}\nadmin_token: {ADMIN_TOKEN}\nkey_pepper: {PEPPER}\n"
        f"access_log: false\n{extra}models:\n  - name: {model}\n    engines: [{sim}]\n"
    )
    return path


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    url: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def gateway_process(config: Path, *args: str) -> AsyncIterator[GatewayProcess]:
    """A gateway on a free port, healthy on entry, stopped (if still running) on exit."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(*serve_command(config, "--port", str(port), *args))
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        yield GatewayProcess(f"http://127.0.0.1:{port}", proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
