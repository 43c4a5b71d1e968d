"""What settling one request writes: its usage record and its rate-limit reconciliation.

Both go to Redis in one script call, under one idempotency key (the record id), so a
settlement retried after a lost reply or a Redis restart is applied once. A settlement is
plain data so the retry queue can keep it and the spill file can carry it across restarts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gateway.metering.record import UsageRecord


@dataclass(frozen=True, slots=True)
class LimitSettlement:
    """Move both token buckets by (real - reserved) tokens and release the concurrency lease."""

    lease: str
    delta: int
    key_tpm: int  # 0: no tokens-per-minute limit at this scope
    tenant_tpm: int
    # Each bucket's TAT right after the admission charged it (Redis ms; 0: not known, as in
    # spill files written before these were): a refund gives back no more than it still holds.
    key_until_ms: int = 0
    tenant_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    id: str  # the idempotency key; the record's id when there is a record
    tenant: str
    scope_id: str  # the caller's limit scope (Principal.scope_id), whose counters it settles
    record: UsageRecord | None  # None: the request never reached an engine
    limits: LimitSettlement | None  # None: nothing limited this caller

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: bytes) -> Settlement:
        data: dict[str, Any] = orjson.loads(line)
        record, limits = data.get("record"), data.get("limits")
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            scope_id=data["scope_id"] if "scope_id" in data else data["key_id"],  # older spills
            record=None if record is None else UsageRecord(**record),
            limits=None if limits is None else LimitSettlement(**limits),
        )


def lease_release(tenant: str, scope_id: str, lease: str) -> Settlement:
    """Free a concurrency lease whose release.lua Redis never took (the process stopped while
    Redis was away): settled like a request, its marker keeps it to once; its tokens and
    request entry are left to the window."""
    limits = LimitSettlement(lease=lease, delta=0, key_tpm=0, tenant_tpm=0)
    return Settlement(
        id=f"release-{lease}", tenant=tenant, scope_id=scope_id, record=None, limits=limits
    )
