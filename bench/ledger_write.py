"""What writing the usage ledger costs the gateway: client CPU per settlement.

Settlements (a usage record, no limits) are written to a real Redis, one per call as when
requests end far apart, and in batches of 16 as the settler's group commit sends them under
load; the same commands (`Ledger.commands`) each time, sent two ways: as a redis-py pipeline
(its pooled asyncio connection, commands packed by hiredis: how the gateway wrote the ledger
until the pipelined connection) and through `Ledger.write` on the gateway's pipelined
connection (`gateway/redis_pipe.py`). Prints this process's CPU time per settlement (wall time
includes waiting for Redis) and Redis's own time per settlement (one settle.lua call takes a
batch's settlements of one key, model and day together).

    .venv/bin/python -m bench.ledger_write [--settlements 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

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


async def redis_py_pipeline(client: Redis, ledger: Ledger, batch: list[Settlement]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for command in ledger.commands(batch):
            pipe.execute_command(*command)
        await pipe.execute()


async def gateway_pipe(client: Redis, ledger: Ledger, batch: list[Settlement]) -> None:
    await ledger.write(batch)


WAYS: dict[str, Callable[[Redis, Ledger, list[Settlement]], Awaitable[None]]] = {
    "redis-py pipeline": redis_py_pipeline,
    "gateway pipe (redis_pipe)": gateway_pipe,
}


async def per_settlement(url: str, way: str, batch: int, total: int) -> tuple[float, float, float]:
    """CPU µs, wall µs (this process) and Redis µs per settlement."""
    client = redis_client(url, 5.0, 4)
    ledger = Ledger(client, MeteringSettings(), window_s=60)
    write = WAYS[way]
    try:
        await ledger.write([settlement(0)])  # loads the script
        await write(client, ledger, [settlement(0)])  # opens the connection
        await client.config_resetstat()
        todo = [settlement(i) for i in range(total)]
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, total, batch):
            await write(client, ledger, todo[start : start + batch])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stats = await client.info("commandstats")
    finally:
        await ledger.close()
        await client.aclose()
    redis_us = float(stats["cmdstat_evalsha"]["usec"]) / total  # a call settles a key's group
    return cpu / total * 1e6, wall / total * 1e6, redis_us


async def main(total: int) -> None:
    async with running_redis(None) as url:
        print(f"{'way':<26} {'batch':>5} {'CPU µs':>7} {'wall µs':>8} {'Redis µs':>9}")
        for batch in (1, 16):
            for way in WAYS:
                cpu, wall, redis_us = await per_settlement(url, way, batch, total)
                print(f"{way:<26} {batch:>5} {cpu:>7.1f} {wall:>8.1f} {redis_us:>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settlements", type=int, default=4000)
    asyncio.run(main(parser.parse_args().settlements))
