"""`llmaas serve` as real processes, for tests that need several gateways or a killed one."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.netutil import free_port, wait_http_ok

ADMIN_TOKEN = "test-admin-token-0123456789"
PEPPER = "test-pepper-0123456789abcdef"
# What a scraper sends for /metrics (and /readyz's detail): the admin token does.
OPS = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def serve_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config), *args]


def shared_config(path: Path, *, redis_url: str, model: str, sim: str, extra: str = "") -> Path:
    """A config several gateways can share: one Redis, keys on, one model on the simulator.

    `extra` is more YAML on top. Unless it sets one, the spill directory is `<name>-spill` next
    to the file: a test's gateway never spills into the default under the user's home.
    """
    config: dict[str, Any] = {
        "redis_url": redis_url,
        "admin_token": ADMIN_TOKEN,
        "key_pepper": PEPPER,
        "access_log": False,
        "models": [{"name": model, "engines": [sim]}],
    }
    config.update(yaml.safe_load(extra) or {})
    metering = config.setdefault("metering", {})
    metering.setdefault("spill_dir", str(path.with_name(f"{path.stem}-spill")))
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    url: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def gateway_process(
    config: Path, *args: str, log: Path | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """A gateway on a free port, healthy on entry, stopped (if still running) on exit; its
    stderr (the JSON log lines) goes to `log` when given; `env` adds to the environment."""
    port = free_port()
    command = serve_command(config, "--port", str(port), *args)
    stderr = await asyncio.to_thread(log.open, "ab") if log is not None else None
    environment = None if env is None else {**os.environ, **env}
    try:
        proc = await asyncio.create_subprocess_exec(*command, stderr=stderr, env=environment)
    finally:
        if stderr is not None:
            stderr.close()
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        yield GatewayProcess(f"http://127.0.0.1:{port}", proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def admin_request(
    http: aiohttp.ClientSession, gateway: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One call of the admin API (`path` under /admin/v1) with the tests' admin token."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"{gateway}/admin/v1{path}"
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def tenant_key(http: aiohttp.ClientSession, gateway: str, tenant: str) -> dict[str, str]:
    """Create `tenant` and a key of it through the admin API: the key's Authorization header."""
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.put(f"{gateway}/admin/v1/tenants/{tenant}", json={}, headers=admin) as r:
        assert r.status == 200
    async with http.post(f"{gateway}/admin/v1/keys", json={"tenant": tenant}, headers=admin) as r:
        assert r.status == 201
        return {"authorization": f"Bearer {(await r.json())['key']}"}
