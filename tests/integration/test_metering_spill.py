"""Spill files replay into their own ledger only: real gateway processes on two Redis servers
share one spill directory; the one on the other ledger reports the file and leaves it alone."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.metering.ledger import LEDGER_ID, TENANTS, log_key
from gateway.metering.spill import count_lines
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import OPS, gateway_process, shared_config, tenant_key
from tests.support.redis_control import restartable_redis

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello"}]
STOPPED_BY_SIGTERM = -signal.SIGTERM
FOREIGN = "llmaas_usage_foreign_spill_records"


async def _chat(http: aiohttp.ClientSession, gateway: str, headers: dict[str, str]) -> None:
    body = {"model": MODEL, "messages": HELLO}
    async with http.post(f"{gateway}/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200


async def _redis(url: str) -> tuple[int, set[bytes], bytes | None]:
    """Records of the tenant `spilled`, the tenants with usage, and the ledger's id."""
    redis = Redis.from_url(url)
    try:
        size = int(await redis.xlen(log_key("spilled")))
        tenants = set(cast("list[bytes]", await redis.zrange(TENANTS, 0, -1)))
        return size, tenants, cast("bytes | None", await redis.get(LEDGER_ID))
    finally:
        await redis.aclose()


async def _records(url: str) -> int:
    return (await _redis(url))[0]


async def _foreign(http: aiohttp.ClientSession, gateway: str) -> float | None:
    async with http.get(f"{gateway}/metrics", headers=OPS) as resp:
        found = re.search(rf"^{FOREIGN} (\S+)$", await resp.text(), re.M)
    return float(found.group(1)) if found else None


def _warnings(log: Path) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e["msg"] == "spill file of another ledger left in place"]


async def test_a_spill_file_replays_into_its_own_ledger_only(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    (tmp_path / "x").mkdir()
    extra = f"metering: {{spill_dir: {spill}, flush_timeout_s: 1}}\n"
    async with (
        restartable_redis(tmp_path / "x") as x,  # append-only file: ledger X outlives a restart
        running_redis(None) as y_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        on_x = shared_config(
            tmp_path / "x.yaml", redis_url=x.url, model=MODEL, sim=sim, extra=extra
        )
        on_y = shared_config(
            tmp_path / "y.yaml", redis_url=y_url, model=MODEL, sim=sim, extra=extra
        )

        # Gateway A meters into X, which goes away; A spills at SIGTERM.
        async with gateway_process(on_x) as a:
            headers = await tenant_key(http, a.url, "spilled")
            await _chat(http, a.url, headers)  # the key is now cached
            async with asyncio.timeout(10):  # its settlement may wait a moment for company
                while await _records(x.url) < 1:  # noqa: ASYNC110 (polling Redis)
                    await asyncio.sleep(0.05)
            _, _, x_ledger = await _redis(x.url)
            assert x_ledger is not None
            await x.stop()
            for _ in range(3):
                await _chat(http, a.url, headers)  # served; the settlement waits in the queue
            a.process.send_signal(signal.SIGTERM)
            assert await a.process.wait() == STOPPED_BY_SIGTERM
        (file,) = spill.glob("*.jsonl")
        assert file.name.startswith(f"spill-{x_ledger.decode()}-")
        assert count_lines(file) == 3
        content = file.read_bytes()

        # Gateway B meters into Y, with the same spill directory: it reports A's file.
        async with gateway_process(on_y, log=tmp_path / "b.log") as b:
            async with asyncio.timeout(10):
                while await _foreign(http, b.url) != 3:  # noqa: ASYNC110 (polling /metrics)
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a moment for a replay that should not happen
            size, tenants, y_ledger = await _redis(y_url)
            assert (size, tenants) == (0, set())  # nothing billed to Y
            assert y_ledger not in (None, x_ledger)
        assert file.read_bytes() == content
        (warning,) = _warnings(tmp_path / "b.log")
        assert warning["level"] == "warning"
        assert (warning["ledger"], warning["records"]) == (x_ledger.decode(), 3)
        assert warning["this_ledger"].encode() == y_ledger

        # Gateway C on X, back with its data, replays the file into X once.
        await x.start()
        async with gateway_process(on_x) as c:
            async with asyncio.timeout(15):
                while await _records(x.url) < 4:  # noqa: ASYNC110 (polling Redis)
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert await _records(x.url) == 4
            assert await _foreign(http, c.url) == 0
        assert list(spill.glob("*.jsonl")) == []
