"""Redis Cluster readiness: every command, MULTI/EXEC block and script the gateway sends during
its main operations touches keys of one hash slot, as recorded by MONITOR on a real Redis and
checked with Redis's own key extraction (COMMAND GETKEYS) and redis-py's slot function."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, OTHER, auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.redis_monitor import groups, monitoring
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def keys_of(redis: Redis, args: list[bytes], memo: dict[bytes, bool]) -> list[bytes]:
    name = args[0].upper()
    if memo.get(name) is False:
        return []
    try:
        found: list[str | bytes] = await redis.command_getkeys(*args)
    except ResponseError:  # a command without keys (PUBLISH, PING, SCRIPT LOAD, ...)
        memo.setdefault(name, False)
        return []
    memo[name] = True
    return [k.encode() if isinstance(k, str) else k for k in found]


async def _operate(http: aiohttp.ClientSession, base: str) -> None:
    """The gateway's main operations: admin writes and lists, limited admissions, metering and
    its queries, stored responses."""

    async def call(method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = ADMIN if key is None else {"authorization": f"Bearer {key}"}
        async with http.request(method, f"{base}{path}", json=body, headers=headers) as resp:
            assert resp.status < 300, (path, resp.status, await resp.text())
            return await resp.json(content_type=None)

    limits = {"rpm": 1000, "tpm": 1_000_000, "max_concurrency": 10}
    for tenant in ("alpha", "beta"):
        await call("PUT", f"/admin/v1/tenants/{tenant}", limits)
    made = [
        await call("POST", "/admin/v1/keys", {"tenant": t, **limits}) for t in ("alpha", "beta")
    ]
    for key in (k["key"] for k in made):
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
        await call("POST", "/v1/chat/completions", chat, key)
        stored = await call("POST", "/v1/responses", {"model": MODEL, "input": "hi"}, key)
        await call("GET", f"/v1/responses/{stored['id']}", key=key)
    for _ in range(100):  # until metering has written both tenants' records
        usage = await call("GET", "/admin/v1/usage?group_by=tenant")
        if len(usage["data"]) == 2:
            break
        await asyncio.sleep(0.05)
    async with http.get(f"{base}/admin/v1/usage/records?tenant=alpha", headers=ADMIN) as resp:
        assert resp.status == 200
        assert (await resp.read()).count(b"\n") >= 2  # ndjson: one line per record
    await call("GET", "/v1/usage", key=made[0]["key"])
    rotated = await call("POST", f"/admin/v1/keys/{made[0]['id']}/rotate")
    await call("GET", "/v1/models", key=rotated["key"])
    await call("DELETE", f"/admin/v1/keys/{made[1]['id']}")
    await call("GET", "/admin/v1/keys")
    await call("GET", "/admin/v1/tenants")
    await call("POST", "/admin/v1/keys", {"tenant": "gamma"})  # (creates the tenant)
    await call("DELETE", "/admin/v1/tenants/gamma")


async def test_every_redis_transaction_and_script_stays_in_one_slot(tmp_path: Path) -> None:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL, OTHER], max_tokens=8)) as sim,
        serve_asgi(create_app(auth_settings(sim, redis_url, tmp_path / "spill"))) as gateway,
        aiohttp.ClientSession() as http,
    ):
        async with monitoring(redis_url) as recorded:
            await _operate(http, gateway)
        redis = Redis.from_url(redis_url)
        try:
            memo: dict[bytes, bool] = {}
            checked: list[tuple[list[bytes], set[int]]] = []
            for unit in groups(recorded):
                keys = [k for args in unit for k in await keys_of(redis, args, memo)]
                checked.append(([args[0].upper() for args in unit], {key_slot(k) for k in keys}))
        finally:
            await redis.aclose()
    names = {n for unit_names, _ in checked for n in unit_names}
    # The recording saw what it was meant to: scripts, a transaction, auth, limits, metering.
    assert {b"EVALSHA", b"SET", b"GET", b"SMEMBERS", b"XADD"} <= names
    recorded_keys = b" ".join(a for _, args in recorded for a in args)
    for part in (b"llmaas:apikey:", b":resp:", b":adm:", b":usage"):
        assert part in recorded_keys, part
    assert any(args[0].upper() == b"MULTI" for _, args in recorded)
    spread = [(unit_names, slots) for unit_names, slots in checked if len(slots) > 1]
    assert spread == [], f"{len(spread)} of {len(checked)} units touch more than one slot"
