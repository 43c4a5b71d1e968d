"""Admission when Redis is slow or gone: failure_mode answers, and nothing stays charged."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.app import create_app
from gateway.auth.authenticate import Authenticator
from gateway.auth.principal import Limits, Principal
from gateway.embedded.redis_server import running_redis
from gateway.limits.limiter import Limiter, scope_keys
from gateway.limits.releases import Releases
from gateway.metering.ledger import log_key
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL, auth_settings
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import gateway_process, shared_config, tenant_key
from tests.support.key_cache import auth_feed_subscribed, request_until_cached
from tests.support.logs import collected
from tests.support.redis_control import RedisProxy, RestartableRedis, redis_proxy
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
TENANT = "faults"


@dataclass(frozen=True, slots=True)
class Faulty:
    gateway: str
    proxy: RedisProxy
    redis_server: RestartableRedis
    redis: Redis  # straight to Redis, past the proxy
    http: aiohttp.ClientSession
    headers: dict[str, str]
    key_id: str
    auth: Authenticator  # the gateway's own, to see what its key cache holds
    releases: Releases  # the gateway's own

    async def complete_with_the_key_cached(self) -> None:
        """Completions (each 200) until the key and its tenant are in the gateway's cache."""

        async def served() -> None:
            assert (await self.complete())[0] == 200

        await request_until_cached(self.auth, self.key_id, TENANT, served)

    async def complete(self) -> tuple[int, Any, float]:
        started = time.monotonic()
        url = f"{self.gateway}/v1/chat/completions"
        async with self.http.post(url, json=BODY, headers=self.headers) as resp:
            return resp.status, await resp.json(), time.monotonic() - started

    async def metric(self, line: str) -> float:
        async with self.http.get(f"{self.gateway}/metrics", headers=ADMIN) as resp:
            found = re.search(rf"^{re.escape(line)} (\S+)$", await resp.text(), re.M)
        return float(found.group(1)) if found else 0.0

    async def limits(self) -> dict[str, Any]:
        """Both scopes' request logs (members), leases (count) and token buckets (TAT ms)."""
        (key_rpm, key_tpm, key_leases), (rpm, tpm, leases) = scope_keys(TENANT, self.key_id)
        return {
            "requests": [set(await self.redis.zrange(k, 0, -1)) for k in (key_rpm, rpm)],
            "leases": [await self.redis.zcard(k) for k in (key_leases, leases)],
            "tat": [tat_of(await self.redis.get(k)) for k in (key_tpm, tpm)],
        }


def tat_of(value: bytes | str | None) -> float:
    """A token bucket's TAT from its "TAT:tpm" (admission.lua); 0 for none."""
    text = value.decode() if isinstance(value, bytes) else value or "0"
    return float(text.split(":")[0])


@asynccontextmanager
async def faulty_stack(
    tmp_path: Path,
    failure_mode: str,
    *,
    proxied: bool = True,
    limits_timeout_s: float = 1.0,
    sim: SimConfig | None = None,
    cache_ttl_s: float | None = None,
    stale_max_s: float | None = None,
    tpm: bool = True,
    maxmemory_policy: str = "noeviction",
) -> AsyncIterator[Faulty]:
    """A gateway whose Redis sits behind a proxy (or not), and a key limited at both scopes
    (`tpm`: in tokens too, a few requests' worth)."""
    redis_server = RestartableRedis(tmp_path)
    await redis_server.start()
    try:
        async with Redis.from_url(redis_server.url) as redis:  # as the gateway first sees it
            await redis.config_set("maxmemory-policy", maxmemory_policy)
        async with (
            redis_proxy(redis_server.port) as proxy,
            running_sim(sim or SimConfig(models=[MODEL])) as sim_url,
        ):
            redis_url = proxy.url if proxied else redis_server.url
            settings = auth_settings(sim_url, redis_url, tmp_path / "spill").model_copy(deep=True)
            settings.limits.failure_mode = failure_mode  # type: ignore[assignment]
            settings.limits.timeout_s = limits_timeout_s
            # Most tests end with Redis away: the usage flush at shutdown (10 s by default)
            # would wait it out for nothing they check. A second, then the rest spills.
            settings.metering.flush_timeout_s = 1.0
            if cache_ttl_s is not None:
                settings.auth.cache_ttl_s = cache_ttl_s
            if stale_max_s is not None:
                settings.auth.stale_max_s = stale_max_s
            app = create_app(settings)
            async with (
                serve_asgi(app) as gateway,
                aiohttp.ClientSession() as http,
                Redis.from_url(redis_server.url) as redis,
            ):
                # The key cache empties once the invalidation feed is confirmed: on a busy
                # machine that came after the first request, whose cached key then was gone.
                await asyncio.wait_for(app.state.gateway.auth_feed.subscribed.wait(), 10)
                admin = f"{gateway}/admin/v1"
                tenant = {"rpm": 20, "max_concurrency": 10} | ({"tpm": 60} if tpm else {})
                await http.put(f"{admin}/tenants/{TENANT}", json=tenant, headers=ADMIN)
                key = {"tenant": TENANT, "rpm": 10, "max_concurrency": 5} | (
                    {"tpm": 50} if tpm else {}
                )
                async with http.post(f"{admin}/keys", json=key, headers=ADMIN) as resp:
                    created = await resp.json()
                headers = {"authorization": f"Bearer {created['key']}"}
                gw = app.state.gateway
                yield Faulty(
                    gateway,
                    proxy,
                    redis_server,
                    redis,
                    http,
                    headers,
                    created["id"],
                    gw.auth,
                    gw.admission.releases,
                )
    finally:
        await redis_server.stop()


async def settled(stack: Faulty, requests: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """The limits once no lease is held and each log holds `requests` requests."""
    async with asyncio.timeout(timeout_s):
        while True:
            state = await stack.limits()
            if state["leases"] == [0, 0] and [len(r) for r in state["requests"]] == [requests] * 2:
                return state
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(("failure_mode", "status"), [("closed", 503), ("open", 200)])
async def test_a_slow_redis_gets_the_failure_mode_and_charges_nothing(
    tmp_path: Path, failure_mode: str, status: int
) -> None:
    async with faulty_stack(tmp_path, failure_mode) as stack:
        assert (await stack.complete())[0] == 200  # the key is known (cached) from now on
        before = await settled(stack, requests=1)
        assert all(tat > time.time() * 1000 + 5000 for tat in before["tat"])  # well ahead

        stack.proxy.set_mode("delay", delay_s=1.5)  # every script runs, its caller hears late
        answers = await asyncio.gather(*(stack.complete() for _ in range(3)))
        stack.proxy.set_mode("pass")

        for answered, body, elapsed in answers:
            assert answered == status
            assert 1.0 <= elapsed < 2.5  # limits.timeout_s (1 s), not the 1.5 s reply
            if status == 503:
                assert body["error"]["code"] == "rate_limiter_unavailable"
        # The admissions reached Redis (as one pipelined batch: its replies were held once).
        assert stack.proxy.delayed >= 1
        after = await settled(stack, requests=1)  # their releases ran
        assert after["requests"] == before["requests"]  # only the admitted request is counted
        assert after["tat"] == pytest.approx(before["tat"], abs=1.0)  # tokens back, to 1 ms
        # Each given-up admission is released: refunded if it ran, cancelled if it was still
        # gathering behind the first (never sent) when its caller gave up.
        # (Releases run in the background: on a busy machine the last may count a moment later.)
        for _ in range(50):
            refunded = await stack.metric('llmaas_ratelimit_releases_total{outcome="refunded"}')
            cancelled = await stack.metric('llmaas_ratelimit_releases_total{outcome="cancelled"}')
            if refunded + cancelled >= 3:
                break
            await asyncio.sleep(0.1)
        assert refunded >= 1
        assert refunded + cancelled == 3
        unavailable = f'llmaas_ratelimit_unavailable_total{{failure_mode="{failure_mode}"}}'
        assert await stack.metric(unavailable) == 3


@pytest.mark.parametrize("fault", ["refused", "closed"])
async def test_an_unreachable_redis_answers_at_once(tmp_path: Path, fault: str) -> None:
    # A bound far beyond any machine's slowness: answering well inside it means not waiting.
    bound_s = 30.0
    async with faulty_stack(
        tmp_path, "closed", proxied=fault == "closed", limits_timeout_s=bound_s
    ) as stack:
        await stack.complete_with_the_key_cached()
        if fault == "refused":
            await stack.redis_server.stop()  # nothing listens on Redis's port any more
        else:
            stack.proxy.set_mode("refuse")  # connections are taken, then closed at once
        status, body, elapsed = await stack.complete()
    assert status == 503
    assert body["error"]["code"] == "rate_limiter_unavailable"
    assert elapsed < bound_s / 3  # no waiting for the bound meant for a slow Redis


@pytest.mark.parametrize(("failure_mode", "status"), [("closed", 503), ("open", 200)])
async def test_an_outage_longer_than_the_key_cache_keeps_the_failure_mode(
    tmp_path: Path, failure_mode: str, status: int
) -> None:
    """Once the cached key aged out (auth.cache_ttl_s) in an outage, every request was a 503
    auth_store_unavailable, with failure_mode open too, and the limiter's metric (the alerts'
    input) stopped counting. The key's last record answers while Redis cannot be read."""
    async with faulty_stack(tmp_path, failure_mode, cache_ttl_s=0.3) as stack:
        await stack.complete_with_the_key_cached()
        stack.proxy.set_mode("refuse")
        await asyncio.sleep(0.5)  # past the cache's ttl
        answered, body, _ = await stack.complete()
        assert answered == status, body
        if status == 503:
            assert body["error"]["code"] == "rate_limiter_unavailable"
        unavailable = f'llmaas_ratelimit_unavailable_total{{failure_mode="{failure_mode}"}}'
        assert await stack.metric(unavailable) == 1


async def test_a_cached_key_answers_from_its_last_record_for_stale_max_s_only(
    tmp_path: Path,
) -> None:
    """Served for an hour, whatever the operator wanted: a key revoked through another replica
    kept working on one cut off from Redis (a partition) for that long."""
    async with faulty_stack(tmp_path, "open", cache_ttl_s=0.3, stale_max_s=1.0) as stack:
        await stack.complete_with_the_key_cached()
        stack.proxy.set_mode("refuse")
        await asyncio.sleep(0.5)  # past the ttl, within the stale bound
        assert (await stack.complete())[0] == 200
        await asyncio.sleep(1.0)  # past both
        status, body, _ = await stack.complete()
        assert (status, body["error"]["code"]) == (503, "auth_store_unavailable")
        # counted, for LlmaasAuthStoreUnavailable (no metric said it before)
        assert await stack.metric("llmaas_auth_store_unavailable_total") == 1
    (tmp_path / "none").mkdir()
    async with faulty_stack(tmp_path / "none", "open", cache_ttl_s=0.3, stale_max_s=0) as stack:
        await stack.complete_with_the_key_cached()
        stack.proxy.set_mode("refuse")
        await asyncio.sleep(0.5)
        status, body, _ = await stack.complete()
        assert (status, body["error"]["code"]) == (503, "auth_store_unavailable")


async def test_a_second_outage_soon_after_a_first_still_answers_from_the_last_record(
    tmp_path: Path,
) -> None:
    """Found by review: the invalidation feed, subscribed again after a first outage, emptied
    the key cache; Redis gone again soon after, every key was a 503 auth_store_unavailable
    (stale_max_s of cover documented). The records are expired, kept as the stale answer."""
    async with faulty_stack(tmp_path, "open") as stack:
        await stack.complete_with_the_key_cached()
        keys = stack.auth.cache.keys.entries
        stack.proxy.set_mode("refuse")  # the feed's connection is cut with the others
        await asyncio.sleep(0.5)
        stack.proxy.set_mode("pass")
        async with asyncio.timeout(20):  # the feed back: the key's record read again next time
            while stack.key_id in keys and keys[stack.key_id][1] > time.monotonic():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        stack.proxy.set_mode("refuse")
        status, body, _ = await stack.complete()
        assert status == 200, body


async def test_an_outage_is_logged_once_not_once_per_refused_request(tmp_path: Path) -> None:
    # Every request refused while Redis was away logged a warning: thousands of lines a second
    # under load, the same line each time. Once per outage now, and once when it is back.
    async with faulty_stack(tmp_path, "closed") as stack:
        await stack.complete_with_the_key_cached()
        with collected("llmaas.limits") as logs:
            stack.proxy.set_mode("refuse")
            # (as many at once as the key's max_concurrency: a sixth is refused 429 in-process)
            answers = await asyncio.gather(*(stack.complete() for _ in range(5)))
            assert [status for status, _, _ in answers] == [503] * 5
            stack.proxy.set_mode("pass")
            assert (await stack.complete())[0] == 200
        messages = [record.getMessage() for record in logs.records]
        assert sum(m.startswith("rate limiter unavailable") for m in messages) == 1
        back = [r for r in logs.records if r.getMessage() == "rate limiter reachable again"]
        assert [r.fields["answered_without_it"] for r in back] == [5]  # type: ignore[attr-defined]
        unavailable = 'llmaas_ratelimit_unavailable_total{failure_mode="closed"}'
        assert await stack.metric(unavailable) == 5  # the metric still counts each


async def test_slots_of_requests_settled_while_redis_was_away_free_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request that finished while Redis was away kept its concurrency slot until the
    # settler's next retry (backoff up to retry_max_interval_s, 5 s): once Redis was back its
    # key was refused 429 "too many in flight" with nothing in flight. The first admission
    # that reaches Redis now has the settler and the releases retry at once.
    monkeypatch.setattr("gateway.metering.settler.FIRST_RETRY_S", 600.0)  # no retry by time
    monkeypatch.setattr("gateway.limits.releases.FIRST_RETRY_S", 600.0)
    slow = SimConfig(models=[MODEL], itl_ms=40.0)
    # No tpm: the requests until the key was cached (one to five, as the machine is busy)
    # left the last one short of tokens at 50 a minute (a 429 in place of its 200).
    async with faulty_stack(tmp_path, "closed", sim=slow, tpm=False) as stack:
        await stack.complete_with_the_key_cached()
        await settled(stack, requests=len((await stack.limits())["requests"][0]))
        url = f"{stack.gateway}/v1/chat/completions"
        body = {**BODY, "max_tokens": 10, "stream": True}
        async with stack.http.post(url, json=body, headers=stack.headers) as resp:
            assert resp.status == 200
            await resp.content.readline()  # admitted: its lease is in Redis
            stack.proxy.set_mode("refuse")
            await resp.read()  # it ends while Redis is away: its settlement waits
        assert (await stack.complete())[0] == 503
        assert (await stack.limits())["leases"] == [1, 1]  # the finished request's slot
        stack.proxy.set_mode("pass")
        status, answer, _ = await stack.complete()  # this admission reaches Redis
        assert status == 200, answer
        state = await settled(stack, requests=len((await stack.limits())["requests"][0]))
        assert state["leases"] == [0, 0]


async def test_a_release_redis_never_took_is_spilled_at_shutdown_and_replayed(
    tmp_path: Path,
) -> None:
    """A gateway that stops while Redis is away, with a lease it had yet to release (an
    admission it gave up on): the lease is settled into the spill file, and the next gateway
    replays it, so the concurrency slot is free again (it used to stay taken for the lease's
    TTL, 600 s)."""
    redis_server = RestartableRedis(tmp_path)
    await redis_server.start()
    caller = Principal(TENANT, "k-spilled", "api_key", key_limits=Limits(max_concurrency=1))
    (_, _, leases), _ = scope_keys(TENANT, caller.key_id)
    try:
        async with (
            redis_proxy(redis_server.port) as proxy,
            running_sim(SimConfig(models=[MODEL])) as sim,
            Redis.from_url(redis_server.url) as redis,
        ):
            settings = auth_settings(sim, proxy.url, tmp_path / "spill").model_copy(deep=True)
            settings.metering.flush_timeout_s = 0.5  # Redis is away at shutdown: spill soon
            admission = await Limiter(redis).admit(caller, 10)  # ran; its client was told 503
            app = create_app(settings)
            async with serve_asgi(app):
                spill = app.state.gateway.accounting.settler.spill
                async with asyncio.timeout(10):  # a gateway that has run knows its ledger
                    while spill.ledger is None:  # noqa: ASYNC110 (nothing to wait on)
                        await asyncio.sleep(0.02)
                proxy.set_mode("refuse")
                app.state.gateway.admission.releases.add(caller, admission.lease)
            assert await redis.zscore(leases, admission.lease) is not None
            assert list((tmp_path / "spill").glob("*.jsonl"))
            proxy.set_mode("pass")
            async with serve_asgi(create_app(settings)):
                async with asyncio.timeout(10):  # the spill file is replayed at start
                    while await redis.zcard(leases):  # noqa: ASYNC110 (Redis's, polled)
                        await asyncio.sleep(0.05)
    finally:
        await redis_server.stop()


async def test_a_full_redis_gets_the_failure_mode_and_still_frees_slots(tmp_path: Path) -> None:
    """Past maxmemory (noeviction) Redis refuses a script's first write that may grow memory,
    and none after it. admission.lua trimmed its request logs first, a write that frees: every
    limited request went on being admitted and served there, where the documented failure_mode
    should decide. A release (and a renewal) must still go through: it frees."""
    async with faulty_stack(tmp_path, "closed", proxied=False) as stack:
        await stack.complete_with_the_key_cached()
        async with asyncio.timeout(10):  # what LlmaasRedisMemoryHigh reads, from INFO memory
            while await stack.metric("llmaas_redis_memory_used_bytes") <= 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await stack.metric("llmaas_redis_maxmemory_bytes") == 0  # none set yet
        caller = Principal(TENANT, stack.key_id, "api_key", key_limits=Limits(max_concurrency=5))
        (_, _, leases), _ = scope_keys(TENANT, stack.key_id)
        limiter = Limiter(stack.redis)
        held = await limiter.admit(caller, 10)  # a request in flight when Redis fills up
        assert await limiter.renew([(caller, held.lease)]) == 1
        used = int((await stack.redis.info("memory"))["used_memory"])
        await stack.redis.config_set("maxmemory-policy", "noeviction")
        await stack.redis.config_set("maxmemory", str(max(1, used // 2)))
        try:
            status, body, _ = await stack.complete()
            assert status == 503, body
            assert body["error"]["code"] == "rate_limiter_unavailable"
            with pytest.raises(RedisError, match="OOM"):
                await limiter.admit(caller, 10)
            assert await limiter.renew([(caller, held.lease)]) == 1
            assert await limiter.release(caller, held.lease) == "refunded"
            assert await stack.redis.zscore(leases, held.lease) is None  # its slot is free
        finally:
            await stack.redis.config_set("maxmemory", "0")
        assert (await stack.complete())[0] == 200


async def test_a_hung_redis_costs_one_slow_request_per_stale_record_not_every_request(
    tmp_path: Path,
) -> None:
    """Found by review: with Redis hung (a stopped process, a lost node whose address still
    takes packets) and a cached key past its ttl, every request waited on Redis (its key read,
    then its tenant read, each up to redis_timeout_s) before the stale record answered, for
    stale_max_s. A failed read now lets the stale record answer at once for a back-off."""
    timeout_s = 2.0  # redis_timeout_s: a request that waits on Redis takes at least this
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
        redis_proxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as proxy,
    ):
        # (metering: the usage flush at its stop, Redis hung, spills after a second, not 10)
        extra = (
            f"redis_timeout_s: {timeout_s}\nauth:\n  cache_ttl_s: 0.5\n"
            "metering:\n  flush_timeout_s: 1\n"
        )
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=proxy.url, model=MODEL, sim=sim, extra=extra
        )
        async with gateway_process(config) as gw:
            await auth_feed_subscribed(redis_url)
            headers = await tenant_key(http, gw.url, "hung")  # no limits: admission needs no Redis

            async def complete() -> tuple[int, float]:
                started = time.monotonic()
                url = f"{gw.url}/v1/chat/completions"
                async with http.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
                    return resp.status, time.monotonic() - started

            assert (await complete())[0] == 200  # caches the key and its tenant
            proxy.set_mode("stall")
            await asyncio.sleep(1.0)  # past the cache's ttl
            answers = [await complete() for _ in range(8)]
        assert [status for status, _ in answers] == [200] * 8, answers
        # The first waits out one read (not its key's, its tenant's, then both again once its
        # body was in: 4 x redis_timeout_s); the rest answer from the records at once.
        assert answers[0][1] < 3 * timeout_s, answers
        assert all(took < timeout_s for _, took in answers[1:]), answers


async def test_a_redis_that_may_evict_the_gateways_keys_is_logged_and_alerted(
    tmp_path: Path,
) -> None:
    # An operator's Redis with volatile-lru (many managed services' default) evicted settlement
    # markers, usage logs and daily totals, allkeys-lru API keys too, and nothing said so.
    with collected("llmaas.redis") as logs:
        async with faulty_stack(tmp_path, "closed", maxmemory_policy="volatile-lru") as stack:
            found = await logs.wait_for(
                lambda r: r.getMessage().startswith("Redis may evict the gateway's keys")
            )
            assert found[0].fields == {"maxmemory_policy": "volatile-lru"}  # type: ignore[attr-defined]
            assert found[0].levelno == logging.WARNING
            assert await stack.metric("llmaas_redis_may_evict") == 1  # LlmaasRedisMayEvict
            await stack.redis.config_set("maxmemory-policy", "noeviction")


async def test_a_redis_that_lost_its_data_is_logged_once(tmp_path: Path) -> None:
    # Redis back without its data: keys, tenants and usage gone, and not a line in the log
    # saying so. The settlement's SET NX of the ledger id now tells it, once.
    async with faulty_stack(tmp_path, "closed", proxied=False, tpm=False) as stack:
        await stack.complete_with_the_key_cached()
        await settled(stack, requests=len((await stack.limits())["requests"][0]))
        with collected("llmaas.metering") as logs:
            await stack.redis.flushall()
            for served in (1, 2):  # the key is still cached here: served, and settled
                assert (await stack.complete())[0] == 200
                async with asyncio.timeout(10):
                    while await stack.redis.xlen(log_key(TENANT)) < served:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
        lost = [r for r in logs.records if r.getMessage().startswith("Redis lost its data")]
        assert [r.levelno for r in lost] == [logging.WARNING]


async def test_a_redis_hang_logs_failed_releases_once_not_once_per_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each retry of a release during a Redis hang logged a warning (24 in 40 s); once per
    # outage now, as the limiter's own, and once when they go through again.
    async with faulty_stack(tmp_path, "closed") as stack:
        await stack.complete_with_the_key_cached()
        caller = Principal(TENANT, stack.key_id, "api_key", key_limits=Limits(max_concurrency=5))
        held = await Limiter(stack.redis).admit(caller, 10)
        tries = 0
        release = stack.releases.limiter.release

        async def counted(caller: Principal, lease: str) -> str:
            nonlocal tries
            tries += 1
            return await release(caller, lease)

        monkeypatch.setattr(stack.releases.limiter, "release", counted)
        with collected("llmaas.limits") as logs:
            stack.proxy.set_mode("refuse")
            stack.releases.add(caller, held.lease)
            async with asyncio.timeout(30):  # retried after 50, 100, 200 ms
                while tries < 4:  # noqa: ASYNC110 (counted by the releases' own task)
                    await asyncio.sleep(0.05)
            stack.proxy.set_mode("pass")
            await logs.wait_for(lambda r: r.getMessage() == "lease releases go through again")
        failed = [r for r in logs.records if r.getMessage().startswith("lease release failed")]
        assert [r.levelno for r in failed] == [logging.WARNING]
        assert await stack.redis.zscore(scope_keys(TENANT, stack.key_id)[0][2], held.lease) is None
