"""What writing the usage ledger costs the gateway: client CPU per settlement.

Settlements (a usage record, no limits) are written to a real Redis through `Ledger.write`,
one per call as when requests end far apart, and in batches of 16 as the settler's group
commit sends them under load; each with redis-py's own asyncio connection (commands packed in
Python) and with the gateway's (packed by hiredis). Prints this process's CPU time per
settlement (wall time includes waiting for Redis) and Redis's own time per script call.

    .venv/bin/python -m bench.ledger_write [--settlements 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.metering.ledger import Ledger
from gateway.metering.record import UsageRecord, new_record_id
from gateway.metering.settlement import Settlement
from gateway.redis_client import redis_client
from gateway.settings import MeteringSettings


def settlement(i: int) -> Settlement:
    rid = new_record_id()
    record = UsageRecord(
        id=rid,
        request_id=f"req-{i}",
        time_ms=int(time.time() * 1000),
        tenant="bench",
        key_id="k1",
        model="smollm2-135m-instruct",
        route="chat/completions",
        engine="http://10.0.0.7:8000",
        stream=True,
        outcome="ok",
        status=200,
        prompt_tokens=37,
        completion_tokens=16,
        cached_tokens=0,
        latency_ms=812.345,
        ttft_ms=41.5,
    )
    return Settlement(rid, "bench", "k1", record, None)


async def per_settlement(client: Redis, batch: int, total: int) -> tuple[float, float, float]:
    """CPU µs, wall µs (this process) and Redis µs per settlement."""
    ledger = Ledger(client, MeteringSettings(), window_s=60)
    await ledger.write([settlement(0)])  # loads the script, opens the connection
    await client.config_resetstat()
    todo = [settlement(i) for i in range(total)]
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, total, batch):
        await ledger.write(todo[start : start + batch])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = await client.info("commandstats")
    redis_us = float(stats["cmdstat_evalsha"]["usec_per_call"])
    return cpu / total * 1e6, wall / total * 1e6, redis_us


async def main(total: int) -> None:
    async with running_redis(None) as url:
        clients = {
            "redis-py connection": Redis.from_url(url),
            "gateway (hiredis packing)": redis_client(url, 5.0, 4),
        }
        print(f"{'client':<26} {'batch':>5} {'CPU µs':>7} {'wall µs':>8} {'Redis µs':>9}")
        try:
            for batch in (1, 16):
                for name, client in clients.items():
                    cpu, wall, redis_us = await per_settlement(client, batch, total)
                    print(f"{name:<26} {batch:>5} {cpu:>7.1f} {wall:>8.1f} {redis_us:>9.1f}")
        finally:
            for client in clients.values():
                await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settlements", type=int, default=4000)
    asyncio.run(main(parser.parse_args().settlements))
