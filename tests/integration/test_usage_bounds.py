"""Usage queries do bounded work per request, whatever a tenant's filter: a rarely matching
filter pages on (short or empty pages with a cursor) instead of scanning the whole ledger, and
totals never span more than MAX_DAYS daily hashes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.metering.ledger import Ledger
from gateway.metering.query import SCAN_PER_PAGE
from gateway.metering.record import CSV_COLUMNS
from gateway.metering.time_range import MAX_DAYS
from gateway.settings import MeteringSettings, Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.cli import run_llmaas
from tests.support.gateways import ADMIN_TOKEN, PEPPER, tenant_key
from tests.support.redis_monitor import Command, monitoring
from tests.support.servers import serve_asgi
from tests.support.usage_records import settlement_of, usage_record

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT = "bulk"
LEDGER_SIZE = 5000
RARE = {1234, 3210, 4990}  # the positions of the records the filter matches


@dataclass(frozen=True, slots=True)
class Bulk:
    gateway: str
    redis_url: str
    http: aiohttp.ClientSession
    tenant_auth: dict[str, str]
    rare_ids: list[str]

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        async with self.http.get(f"{self.gateway}{path}", headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers


async def _fill_ledger(redis_url: str, spill: Path) -> list[str]:
    """LEDGER_SIZE records of TENANT through the real ledger; the ids of the rare ones."""
    redis = Redis.from_url(redis_url)
    ledger = Ledger(redis, MeteringSettings(spill_dir=spill), window_s=60)
    rare: list[str] = []
    try:
        batch = []
        for i in range(LEDGER_SIZE):
            record = usage_record(tenant=TENANT, key_id="rare" if i in RARE else "common")
            rare += [record.id] if i in RARE else []
            batch.append(settlement_of(record))
            if len(batch) == 500:
                await ledger.write(batch)
                batch = []
        await ledger.write(batch)
    finally:
        await redis.aclose()
    return rare


@pytest_asyncio.fixture(name="bulk", scope="module", loop_scope="session")
async def bulk_fixture(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bulk]:
    spill = tmp_path_factory.mktemp("bulk-spill")
    async with running_redis(None) as redis_url, running_sim(SimConfig(models=[MODEL])) as sim:
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "redis_url": redis_url,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(spill)},
                # What is bounded here is the work per page (counted below), not its time: a
                # page read under MONITOR on a busy 2-core machine once took past the 0.5 s.
                "redis_timeout_s": 5.0,
            }
        )
        rare_ids = await _fill_ledger(redis_url, spill)
        async with (
            serve_asgi(create_app(settings)) as gateway,
            aiohttp.ClientSession() as http,
        ):
            auth = await tenant_key(http, gateway, TENANT)
            yield Bulk(gateway, redis_url, http, auth, rare_ids)


def _xrange_counts(commands: list[Command]) -> list[int]:
    """The COUNT of each XRANGE run: an upper bound of the entries it returned."""
    counts = []
    for _, args in commands:
        if args and args[0].upper() == b"XRANGE":
            assert args[-2].upper() == b"COUNT", args  # never an unbounded XRANGE
            counts.append(int(args[-1]))
    return counts


async def _follow(bulk: Bulk, route: str, headers: dict[str, str]) -> tuple[list[str], list[int]]:
    """Every page of `route`: the record ids, and the entries each page read at most."""
    ids: list[str] = []
    per_page: list[int] = []
    cursor = ""
    for _ in range(50):
        async with monitoring(bulk.redis_url) as seen:
            status, body, resp_headers = await bulk.get(f"{route}{cursor}", headers)
        assert status == 200, body
        per_page.append(sum(_xrange_counts(seen)))
        ids += [orjson.loads(line)["id"] for line in body.splitlines()]
        if "x-next-cursor" not in resp_headers:
            return ids, per_page
        cursor = f"&after={resp_headers['x-next-cursor']}"
    raise AssertionError("the pages never ended")


async def test_a_rare_filter_pages_on_with_bounded_reads(bulk: Bulk) -> None:
    for route, headers in (
        ("/v1/usage/records?key_id=rare", bulk.tenant_auth),
        (f"/admin/v1/usage/records?tenant={TENANT}&key_id=rare", ADMIN),
        ("/admin/v1/usage/records?key_id=rare&limit=10", ADMIN),  # every tenant
    ):
        ids, per_page = await _follow(bulk, route, headers)
        assert ids == bulk.rare_ids, route
        assert max(per_page) <= SCAN_PER_PAGE, (route, per_page)
        assert len(per_page) >= LEDGER_SIZE // SCAN_PER_PAGE, (route, per_page)
        assert sum(per_page) <= LEDGER_SIZE + SCAN_PER_PAGE, (route, per_page)
        print(f"{route}: {len(per_page)} pages, entries read per page {per_page}")


async def test_the_bound_grows_with_the_limit(bulk: Bulk) -> None:
    """limit 3000 (above SCAN_PER_PAGE) examines 3000 entries: all but the rare one match."""
    status, body, headers = await bulk.get(
        "/v1/usage/records?key_id=common&limit=3000", bulk.tenant_auth
    )
    assert status == 200
    assert len(body.splitlines()) == 3000 - 1  # entry 1234 is a rare one
    status, body, _ = await bulk.get(
        f"/v1/usage/records?key_id=common&limit=3000&after={headers['x-next-cursor']}",
        bulk.tenant_auth,
    )
    assert len(body.splitlines()) == LEDGER_SIZE - 3000 - (len(RARE) - 1)


async def test_the_cli_follows_empty_pages_to_every_record(bulk: Bulk) -> None:
    args = ("usage", "--records", "--tenant", TENANT, "--key-id", "rare")
    code, out, err = await run_llmaas(bulk.gateway, *args, "--json", token=ADMIN_TOKEN)
    assert code == 0, err
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == bulk.rare_ids
    code, out, err = await run_llmaas(bulk.gateway, *args, "--csv", token=ADMIN_TOKEN)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert len(lines) == 1 + len(RARE)  # one header, no blank lines for the empty pages


async def test_a_tenant_cannot_ask_for_more_than_max_days_of_totals(bulk: Bulk) -> None:
    today = datetime.now(UTC).date()
    widest = today - timedelta(MAX_DAYS - 1)
    async with monitoring(bulk.redis_url) as seen:
        status, body, _ = await bulk.get(
            f"/v1/usage?start={widest.isoformat()}&group_by=key_id", bulk.tenant_auth
        )
    assert status == 200, body
    rows = {row["key_id"]: row["requests"] for row in orjson.loads(body)["data"]}
    assert rows == {"rare": len(RARE), "common": LEDGER_SIZE - len(RARE)}
    hashes = [args for _, args in seen if args and args[0].upper() == b"HGETALL"]
    assert len(hashes) == MAX_DAYS
    assert all(f"{{t:{TENANT}}}".encode() in args[1] for args in hashes)

    too_wide = (widest - timedelta(1)).isoformat()
    status, body, _ = await bulk.get(f"/v1/usage?start={too_wide}", bulk.tenant_auth)
    assert (status, orjson.loads(body)["error"]["param"]) == (400, "start")
    status, body, _ = await bulk.get("/v1/usage?start=0", bulk.tenant_auth)  # Unix epoch
    assert status == 400
