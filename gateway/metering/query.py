"""Reading the ledger: totals grouped by tenant / key / model / day, and raw records in pages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from gateway.metering.ledger import METRICS, TENANTS, TRAINING_METRICS, day_key, log_key
from gateway.metering.record import UsageRecord

GROUPS = ("tenant", "key_id", "model", "day")
DEFAULT_GROUP_BY = ("tenant", "key_id", "model")
# Every total a row has: inference's, then fine-tuning's (jobs, and the tokens trained on).
TOTALS = (*METRICS, *(m for m in TRAINING_METRICS if m))
_PIPELINE = 500
# Ledger entries one page may examine, whatever its filter: a key_id/model filter that rarely
# matches ends the page early (short or empty, with a cursor) instead of scanning the stream.
SCAN_PER_PAGE = 2000


@dataclass(frozen=True, slots=True)
class UsageFilter:
    tenant: str | None = None  # None: every tenant
    key_id: str | None = None
    model: str | None = None

    def matches(self, key_id: str, model: str) -> bool:
        return (self.key_id is None or key_id == self.key_id) and (
            self.model is None or model == self.model
        )


async def tenants_of(redis: Redis, tenant: str | None) -> list[str]:
    if tenant is not None:
        return [tenant]
    members = cast("set[bytes]", await redis.smembers(TENANTS))
    return sorted(t.decode() for t in members)


async def usage_totals(
    redis: Redis, where: UsageFilter, start: date, end: date, group_by: Sequence[str]
) -> list[dict[str, Any]]:
    """Totals per group over the UTC days start..end (inclusive), from the daily hashes."""
    days = [(start + timedelta(i)).isoformat() for i in range((end - start).days + 1)]
    cells = [(t, d) for t in await tenants_of(redis, where.tenant) for d in days]
    totals: dict[tuple[str, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOTALS, 0))
    for offset in range(0, len(cells), _PIPELINE):
        chunk = cells[offset : offset + _PIPELINE]
        async with redis.pipeline(transaction=False) as pipe:
            for tenant, day in chunk:
                pipe.hgetall(day_key(tenant, day))
            hashes = await pipe.execute()
        for (tenant, day), counts in zip(chunk, hashes, strict=True):
            for field, value in counts.items():
                key_id, model, metric = orjson.loads(field)
                if metric not in TOTALS or not where.matches(key_id, model):
                    continue
                dims = {"tenant": tenant, "key_id": key_id, "model": model, "day": day}
                totals[tuple(dims[g] for g in group_by)][metric] += int(value)
    rows = []
    for group in sorted(totals):
        row: dict[str, Any] = dict(zip(group_by, group, strict=True))
        counts = totals[group]
        row.update((metric, counts[metric]) for metric in METRICS)
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]  # inference's
        row.update((metric, counts[metric]) for metric in TOTALS[len(METRICS) :])
        rows.append(row)
    return rows


def _entry_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: records are ordered by (ledger entry id, tenant)."""

    entry_id: str
    tenant: str

    def __str__(self) -> str:
        return f"{self.entry_id}:{self.tenant}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        entry_id, sep, tenant = text.partition(":")
        ms, dash, seq = entry_id.partition("-")
        if not (sep and dash and ms.isdigit() and seq.isdigit() and tenant):
            raise ValueError("not a cursor from a previous page")
        return cls(entry_id, tenant)


class _TenantLog:
    """One tenant's stream, read forward in chunks."""

    def __init__(self, redis: Redis, tenant: str, start: str, end: str, chunk: int) -> None:
        self.redis, self.tenant, self.next, self.end, self.chunk = redis, tenant, start, end, chunk
        self.buffer: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.done = False

    async def head(self) -> tuple[bytes, dict[bytes, bytes]] | None:
        if not self.buffer and not self.done:
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self.redis.xrange(log_key(self.tenant), self.next, self.end, self.chunk),
            )
            self.buffer = entries
            self.done = len(entries) < self.chunk
            if entries:
                self.next = "(" + entries[-1][0].decode()
        return self.buffer[0] if self.buffer else None


async def records_page(
    redis: Redis,
    where: UsageFilter,
    *,
    start_ms: int | None,
    end_ms: int | None,
    after: Cursor | None,
    limit: int,
    scan: int = SCAN_PER_PAGE,
) -> tuple[list[UsageRecord], Cursor | None]:
    """Up to `limit` records written between start_ms and end_ms (ledger time), after `after`;
    and the cursor of the next page, if there may be one.

    A page examines at most max(limit, scan) entries: when the filter matches few of them, the
    page comes back short (even empty) with the cursor where the scan stopped, so the work of
    one request never grows with the size of the ledger."""
    budget = max(limit, scan)
    end = "+" if end_ms is None else str(end_ms)
    tenants = await tenants_of(redis, where.tenant)
    chunk = max(1, min(limit, 1000, budget // max(1, len(tenants))))
    logs = [
        _TenantLog(redis, tenant, _start_of(tenant, start_ms, after), end, chunk)
        for tenant in tenants
    ]
    out: list[UsageRecord] = []
    last: Cursor | None = None
    examined = 0
    while len(out) < limit and examined < budget:
        heads = [(h, log) for log in logs if (h := await log.head()) is not None]
        if not heads:
            return out, None
        (entry_id, fields), log = min(heads, key=lambda x: (_entry_key(x[0][0]), x[1].tenant))
        log.buffer.pop(0)
        examined += 1
        last = Cursor(entry_id.decode(), log.tenant)
        record = UsageRecord.from_fields(fields)
        if where.matches(record.key_id, record.model):
            out.append(record)
    return out, last


def _start_of(tenant: str, start_ms: int | None, after: Cursor | None) -> str:
    """Where a tenant's stream is read from: the range's start, or just past the cursor."""
    start = "-" if start_ms is None else str(start_ms)
    if after is not None and (start_ms is None or int(after.entry_id.split("-")[0]) >= start_ms):
        # (id, tenant) order: this tenant's entry at the cursor's id is already read if the
        # tenant sorts at or before the cursor's tenant.
        start = ("(" if tenant <= after.tenant else "") + after.entry_id
    return start
