"""One usage record: what a request that reached an engine consumed, and how it ended."""

from __future__ import annotations

import dataclasses
import operator
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CSV_COLUMNS = (
    "id",
    "request_id",
    "time",
    "tenant",
    "key_id",
    "model",
    "route",
    "engine",
    "stream",
    "outcome",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "latency_ms",
    "ttft_ms",
)
# What a tenant reads of its own records (/v1/usage/records): not the engine's address, which
# is the operator's network.
TENANT_COLUMNS = tuple(column for column in CSV_COLUMNS if column != "engine")


# The route of a fine-tuning job's record (gateway/finetune/trainer.py): its prompt_tokens are
# the tokens trained on, totalled apart (ledger.TRAINING_METRICS).
FINE_TUNE_ROUTE = "fine_tune"


def new_record_id() -> str:
    """Minted by the gateway for each request: the key that makes writing it idempotent (a
    client's x-request-id may repeat, so it is kept as a field but never deduplicated on)."""
    return os.urandom(12).hex()


@dataclass(frozen=True, slots=True)
class UsageRecord:
    id: str
    request_id: str
    time_ms: int  # when the request arrived, Unix milliseconds (UTC)
    tenant: str
    key_id: str
    model: str
    route: str  # "chat/completions", as under /v1/
    engine: str
    stream: bool
    outcome: str  # an Outcome (gateway/proxy/outcome.py), as stored
    status: int  # what the client was answered (499: it left first)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms: float
    ttft_ms: float | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def day(self) -> str:
        return day_of(self.time_ms)

    def fields(self) -> list[str]:
        """Field/value pairs for XADD, every value a string (None: empty, bools: 0/1)."""
        out = [*FIELD_NAMES, *FIELD_NAMES]
        out[0::2] = FIELD_NAMES
        out[1::2] = [
            ""
            if value is None
            else ("1" if value else "0")
            if value is True or value is False
            else str(value)
            for value in _VALUES(self)
        ]
        return out

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> UsageRecord:
        values = {k.decode(): v.decode() for k, v in raw.items()}
        ttft = values.get("ttft_ms", "")
        return cls(
            id=values["id"],
            request_id=values["request_id"],
            time_ms=int(values["time_ms"]),
            tenant=values["tenant"],
            key_id=values["key_id"],
            model=values["model"],
            route=values["route"],
            engine=values["engine"],
            stream=values["stream"] == "1",
            outcome=values["outcome"],
            status=int(values["status"]),
            prompt_tokens=int(values["prompt_tokens"]),
            completion_tokens=int(values["completion_tokens"]),
            cached_tokens=int(values["cached_tokens"]),
            latency_ms=float(values["latency_ms"]),
            ttft_ms=float(ttft) if ttft else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def view(self, columns: tuple[str, ...] = CSV_COLUMNS) -> dict[str, Any]:
        """The record as the export API shows it: RFC 3339 time and the total."""
        data = self.as_dict()
        data["time"] = rfc3339_ms(data.pop("time_ms"))
        data["total_tokens"] = self.total_tokens
        return {column: data[column] for column in columns}


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(UsageRecord))
_VALUES = operator.attrgetter(*FIELD_NAMES)  # every field's value, in order, in one call


def day_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d")


def rfc3339_ms(time_ms: int) -> str:
    stamp = datetime.fromtimestamp(time_ms / 1000, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
