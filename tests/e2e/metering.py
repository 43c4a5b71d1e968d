"""What the metering e2e tests read: vLLM's own token counters and the tenant's usage ledger."""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis

from gateway.metering.ledger import log_key
from gateway.metering.record import UsageRecord

if TYPE_CHECKING:
    from tests.e2e.conftest import E2E

TENANT = "e2e"  # the tenant of e2e.key
MAX_ABANDON_GAP = 8  # tokens vLLM may generate after the gateway's last report, per request
STORY: Any = [{"role": "user", "content": "Write a very long story about a dragon."}]


def counter(text: str, name: str) -> float:
    """A counter of a Prometheus text page, summed over its label sets."""
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$"
    values = [float(v) for v in re.findall(pattern, text, re.M)]
    assert values, f"{name} missing from the engine's /metrics"
    return sum(values)


@dataclass(frozen=True, slots=True)
class Tokens:
    prompt: int
    generation: int

    def __sub__(self, other: Tokens) -> Tokens:
        return Tokens(self.prompt - other.prompt, self.generation - other.generation)


async def vllm_tokens(e2e: E2E) -> Tokens:
    async with e2e.http.get(f"{e2e.engines.chat}/metrics") as resp:
        text = await resp.text()
    return Tokens(
        int(counter(text, "vllm:prompt_tokens_total")),
        int(counter(text, "vllm:generation_tokens_total")),
    )


async def settled_vllm_tokens(e2e: E2E) -> Tokens:
    """vLLM's counters once nothing runs and two reads a moment apart agree."""
    for _ in range(200):
        if await e2e.running() == 0:
            first = await vllm_tokens(e2e)
            await asyncio.sleep(0.2)
            if await e2e.running() == 0 and await vllm_tokens(e2e) == first:
                return first
        await asyncio.sleep(0.1)
    raise AssertionError("vLLM's token counters did not settle")


class LedgerView:
    """The tenant's usage stream, read as an auditor would."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.key = log_key(TENANT)

    async def count(self) -> int:
        return int(await self.redis.xlen(self.key))

    async def records(self) -> list[UsageRecord]:
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await self.redis.xrange(self.key))
        return [UsageRecord.from_fields(fields) for _, fields in entries]

    async def new_since(self, before: int, expected: int) -> list[UsageRecord]:
        """The records written after the first `before`, once there are `expected` of them
        (and no more turn up shortly after)."""
        for _ in range(100):
            if await self.count() >= before + expected:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        return (await self.records())[before:]


def stall_this_process(seconds: float) -> None:
    """Block this process, and the gateway it serves in-process with it, as a GC pause or a
    busy loop would, right after a client hung up: vLLM goes on generating and sending until
    the gateway sees the client go and closes its connection. What it sent meanwhile was
    billed to nobody (CI 2026-12-07: ledger 3 tokens, vLLM 35); now it is counted."""
    time.sleep(seconds)


def new_rid(label: str) -> str:
    return f"meter-{label}-{os.urandom(4).hex()}"
