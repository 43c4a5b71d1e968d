"""What admission costs on the request path: `AdmissionControl.admit` against a real Redis.

A key limited at both scopes (rpm, tpm and concurrency, high enough never to refuse) is
admitted `--admissions` times, one at a time and 16 at once. Prints this process's CPU time and
wall time per admission, Redis's own time per admission (concurrent ones share a script call),
and the memory Redis holds per admitted request (request logs, leases, and since admissions are
released by id, their markers). Only the public interface is used, so the same file measures
an older checkout:

    .venv/bin/python -m bench.admission_cost [--admissions 4000]
    PYTHONPATH=<older checkout> .venv/bin/python -m bench.admission_cost
"""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis

from gateway.auth.principal import Limits, Principal
from gateway.embedded.redis_server import running_redis
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import Limiter
from gateway.metrics import Metrics
from gateway.redis_client import redis_client
from gateway.settings import LimitsSettings

BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
HIGH = Limits(rpm=10**9, tpm=10**12, max_concurrency=10**6)


async def per_admission(
    redis: Redis, control: AdmissionControl, tenant: str, total: int, concurrency: int
) -> tuple[float, float, float, float]:
    """CPU µs, wall µs, Redis µs and Redis bytes per admission."""
    caller = Principal(tenant, "k", "api_key", key_limits=HIGH, tenant_limits=HIGH)
    await control.admit(caller, BODY)  # loads the script, opens connections
    await redis.config_resetstat()
    memory = (await redis.info("memory"))["used_memory"]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(0, total, concurrency):
        await asyncio.gather(*(control.admit(caller, BODY) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = await redis.info("commandstats")
    grown = (await redis.info("memory"))["used_memory"] - memory
    redis_us = float(stats["cmdstat_evalsha"]["usec"]) / total  # one call admits a gathering
    return cpu / total * 1e6, wall / total * 1e6, redis_us, grown / total


async def main(total: int) -> None:
    async with running_redis(None) as url:
        redis = redis_client(url, 5.0, 64)
        control = AdmissionControl(Limiter(redis), LimitsSettings(), Metrics())
        print(f"{'conc':>4} {'CPU µs':>7} {'wall µs':>8} {'Redis µs':>9} {'Redis B':>8}")
        try:
            for concurrency in (1, 16):
                cpu, wall, redis_us, grown = await per_admission(
                    redis, control, f"bench{concurrency}", total, concurrency
                )
                print(f"{concurrency:>4} {cpu:>7.1f} {wall:>8.1f} {redis_us:>9.1f} {grown:>8.0f}")
        finally:
            await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admissions", type=int, default=4000)
    asyncio.run(main(parser.parse_args().admissions))
