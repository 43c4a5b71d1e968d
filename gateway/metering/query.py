"""Reading the ledger: totals grouped by tenant / key / model / day, and raw records in pages."""

from __future__ import annotations

import hashlib
import heapq
import time
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.metering.ledger import (
    DAY_MS,
    LEGACY_TENANTS,
    METRICS,
    TENANTS,
    TENANTS_FIRST,
    TRAINING_METRICS,
    day_key,
    log_key,
)
from gateway.metering.record import UsageRecord

# Every total a row has: inference's, then fine-tuning's (jobs, and the tokens trained on).
TOTALS = (*METRICS, *(m for m in TRAINING_METRICS if m))
_PIPELINE = 500
# Ledger entries one page may examine, whatever its filter: a key_id/model filter that rarely
# matches ends the page early (short or empty, with a cursor) instead of scanning the stream.
SCAN_PER_PAGE = 2000
# A tenant's last write is a gateway's clock, a record's ledger time Redis's; a record is
# written after its own time (a spill file's, hours after): a query keeps a day of slack.
SLACK_MS = DAY_MS
# Tenants whose last write is before ARGV[1] leave both sets, at once (a write in between would
# otherwise lose its tenant from one).
_PRUNE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""
_PRUNE_SHA = hashlib.sha1(_PRUNE.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class UsageFilter:
    tenant: str | None = None  # None: every tenant
    key_id: str | None = None
    model: str | None = None

    def matches(self, key_id: str, model: str) -> bool:
        return (self.key_id is None or key_id == self.key_id) and (
            self.model is None or model == self.model
        )


@dataclass(frozen=True, slots=True)
class Span:
    """When a tenant's usage may lie: its earliest record's time and its last write (ms, each
    None when not known: a tenant asked for by name, one moved over from the old set)."""

    first_ms: int | None = None
    last_ms: int | None = None

    def days(self, starts: list[int]) -> range:
        """Which of the UTC days starting at `starts` (ms, in order) may have its totals."""
        low = (
            0 if self.first_ms is None else bisect_right(starts, self.first_ms - SLACK_MS - DAY_MS)
        )
        high = (
            len(starts) if self.last_ms is None else bisect_right(starts, self.last_ms + SLACK_MS)
        )
        return range(low, high)


async def tenants_of(
    redis: Redis, tenant: str | None, *, since_ms: int | None, retention_ms: int
) -> dict[str, Span]:
    """The tenants that may have usage written since `since_ms` (any kept, if None), in order,
    with when their usage may lie.

    A tenant whose last write is older than the retention has nothing left (its records are
    trimmed, its daily totals expired): it leaves the sets here, so a query's work follows the
    tenants with usage in its range, not every tenant that ever had any. Tenants in the set of
    gateways before 2026-12-06 are taken as written now and moved over."""
    if tenant is not None:
        return {tenant: Span()}
    now = int(time.time() * 1000)
    cutoff = f"({now - retention_ms - 2 * SLACK_MS}"
    low = "-inf" if since_ms is None else since_ms - SLACK_MS
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(LEGACY_TENANTS)
        pipe.evalsha(_PRUNE_SHA, 2, TENANTS, TENANTS_FIRST, cutoff)
        pipe.zrangebyscore(TENANTS, low, "+inf", withscores=True)
        replies = await pipe.execute(raise_on_error=False)
    if isinstance(replies[1], NoScriptError):  # first use since Redis started
        await redis.eval(_PRUNE, 2, TENANTS, TENANTS_FIRST, cutoff)
    for reply in replies:
        if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
            raise reply
    legacy, _, scored = replies
    last: dict[bytes, int | None] = {t: int(score) for t, score in scored}
    if legacy:  # (SREM, not DEL: a gateway of before may add to it meanwhile)
        await redis.zadd(TENANTS, dict.fromkeys(legacy, now), gt=True)
        # Their usage may go back to the retention's start: a first write through a gateway
        # of today, before or after this, must not hide the days before it.
        await redis.zadd(TENANTS_FIRST, dict.fromkeys(legacy, 0), lt=True)
        await redis.srem(LEGACY_TENANTS, *legacy)
        last.update(dict.fromkeys(legacy))
    names = sorted(last)
    firsts = await redis.zmscore(TENANTS_FIRST, cast("list[str]", names)) if names else []
    return {
        t.decode(): Span(None if f is None else int(f), last[t])
        for t, f in zip(names, firsts, strict=True)
    }


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


async def usage_totals(
    redis: Redis,
    where: UsageFilter,
    start: date,
    end: date,
    group_by: Sequence[str],
    *,
    retention_ms: int,
) -> list[dict[str, Any]]:
    """Totals per group over the UTC days start..end (inclusive), from the daily hashes: those
    of the tenants with usage written since `start`, from their first record's day to the day
    of their last write."""
    days = [start + timedelta(i) for i in range((end - start).days + 1)]
    tenants = await tenants_of(
        redis, where.tenant, since_ms=_day_ms(start), retention_ms=retention_ms
    )
    starts, names = [_day_ms(day) for day in days], [day.isoformat() for day in days]
    cells = [(t, names[i]) for t, span in tenants.items() for i in span.days(starts)]
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


Entry = tuple[bytes, dict[bytes, bytes]]


class _TenantLog:
    """One tenant's stream, read forward in chunks."""

    def __init__(self, tenant: str, start: str, end: str, chunk: int) -> None:
        self.tenant, self.next, self.end, self.chunk = tenant, start, end, chunk
        self.buffer: deque[Entry] = deque()
        self.done = False

    def take(self, entries: list[Entry]) -> None:
        """What a read of `chunk` entries from `next` answered."""
        self.buffer.extend(entries)
        self.done = len(entries) < self.chunk
        if entries:
            self.next = "(" + entries[-1][0].decode()

    async def read(self, redis: Redis) -> None:
        """Read the next chunk if the buffer is empty and the log is not done."""
        if not self.buffer and not self.done:
            found = await redis.xrange(log_key(self.tenant), self.next, self.end, self.chunk)
            self.take(cast("list[Entry]", found))


class _Merge:
    """Tenants' logs merged by (entry id, tenant): a heap of each log's next entry."""

    def __init__(self, redis: Redis, logs: list[_TenantLog]) -> None:
        self.redis = redis
        self.heap = [(_entry_key(log.buffer[0][0]), log.tenant, log) for log in logs if log.buffer]
        heapq.heapify(self.heap)
        self.emptied: _TenantLog | None = None  # read on at the next entry asked for, if any

    @classmethod
    async def start(cls, redis: Redis, logs: list[_TenantLog]) -> _Merge:
        """The logs' first reads, in pipelines."""
        for offset in range(0, len(logs), _PIPELINE):
            batch = logs[offset : offset + _PIPELINE]
            async with redis.pipeline(transaction=False) as pipe:
                for log in batch:
                    pipe.xrange(log_key(log.tenant), log.next, log.end, log.chunk)
                for log, entries in zip(batch, await pipe.execute(), strict=True):
                    log.take(entries)
        return cls(redis, logs)

    async def next(self) -> tuple[Entry, str] | None:
        """The next entry of all the logs, and its tenant; None when every log is read."""
        if self.emptied is not None:
            log, self.emptied = self.emptied, None
            await log.read(self.redis)
            self._push(log)
        if not self.heap:
            return None
        _, tenant, log = heapq.heappop(self.heap)
        entry = log.buffer.popleft()
        if log.buffer:
            self._push(log)
        elif not log.done:
            self.emptied = log
        return entry, tenant

    def _push(self, log: _TenantLog) -> None:
        if log.buffer:
            heapq.heappush(self.heap, (_entry_key(log.buffer[0][0]), log.tenant, log))


async def records_page(
    redis: Redis,
    where: UsageFilter,
    *,
    start_ms: int | None,
    end_ms: int | None,
    after: Cursor | None,
    limit: int,
    retention_ms: int,
    scan: int = SCAN_PER_PAGE,
) -> tuple[list[UsageRecord], Cursor | None]:
    """Up to `limit` records written between start_ms and end_ms (ledger time), after `after`;
    and the cursor of the next page, if there may be one.

    A page examines at most max(limit, scan) entries: when the filter matches few of them, the
    page comes back short (even empty) with the cursor where the scan stopped, so the work of
    one request never grows with the size of the ledger. The tenants' logs are merged by entry
    id (a heap), their first reads sent in one pipeline; only tenants with usage written since
    the range's start (or the cursor) are read."""
    budget = max(limit, scan)
    end = "+" if end_ms is None else str(end_ms)
    since = start_ms
    if after is not None:
        since = max(since or 0, int(after.entry_id.split("-")[0]))
    tenants = await tenants_of(redis, where.tenant, since_ms=since, retention_ms=retention_ms)
    chunk = max(1, min(limit, 1000, budget // max(1, len(tenants))))
    logs = [
        _TenantLog(tenant, _start_of(tenant, start_ms, after), end, chunk) for tenant in tenants
    ]
    merge = await _Merge.start(redis, logs)
    out: list[UsageRecord] = []
    last: Cursor | None = None
    examined = 0
    while len(out) < limit and examined < budget:
        found = await merge.next()
        if found is None:
            return out, None
        (entry_id, fields), tenant = found
        examined += 1
        last = Cursor(entry_id.decode(), tenant)
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
