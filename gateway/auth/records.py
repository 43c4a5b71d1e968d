"""Tenants and API keys as stored in Redis (JSON), and their admin views."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictBool

from gateway.auth.principal import MAX_LIMIT, Limits
from gateway.netutil import media_host

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A DNS name or an IP literal (IPv6 without brackets): no scheme, port, path or userinfo.
HOST_PATTERN = r"^\[?[A-Za-z0-9._:-]{1,253}\]?$"
Host = Annotated[
    str,
    Field(pattern=HOST_PATTERN),
    AfterValidator(media_host),
]


def _a_number(value: object) -> object:
    """JSON's true and false are no numbers here (pydantic would store them as 1 and 0: a
    limit of one request a minute), nor are strings ("1_000" and " 7 " were read as numbers)."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true or false")
    if isinstance(value, str):
        raise ValueError("must be a whole number, not a string")
    return value


Whole = Annotated[int, BeforeValidator(_a_number)]


def _null_is_false(value: object) -> object:
    """A switch's null (a merge patch's "clear") is its default, off."""
    return False if value is None else value


Limit = Annotated[Whole, Field(ge=1, le=MAX_LIMIT)]


class LimitFields(BaseModel):
    rpm: Limit | None = None
    tpm: Limit | None = None
    max_concurrency: Limit | None = None
    models: list[str] | None = None  # None: every model

    def limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.max_concurrency)

    def model_set(self) -> frozenset[str] | None:
        return None if self.models is None else frozenset(self.models)


class TenantFields(LimitFields):
    # vLLM's request priority for every request of the tenant (lower runs first; engines need
    # --scheduling-policy priority). None: the engines' default (0). Clients cannot set it.
    priority: Annotated[Whole, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    # Hosts the engines may fetch this tenant's media URLs from (gateway/api/media.py).
    # None: the gateway's request_policy.media_hosts; []: no remote media at all.
    # (As stored: an admin's are checked as Host when set, api/admin.py; one the API took
    # before, a host:port, is read as it is, not a 500 for the tenant and every listing.)
    media_hosts: list[str] | None = None
    # Every request of the tenant's keys and tokens is refused (403 tenant_disabled) while true:
    # an off-boarded or suspended customer, in one write, its keys and data kept.
    disabled: Annotated[StrictBool, BeforeValidator(_null_is_false)] = False

    def media_host_set(self) -> frozenset[str] | None:
        return None if self.media_hosts is None else frozenset(self.media_hosts)


class TenantRecord(TenantFields):
    id: str = Field(pattern=ID_PATTERN)
    created_at: float = Field(default_factory=time.time)


class KeyRecord(LimitFields):
    id: str
    tenant: str = Field(pattern=ID_PATTERN)
    name: str | None = None
    secret_hash: str
    created_at: float = Field(default_factory=time.time)
    expires_at: float | None = None
    revoked: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def usable(self, now: float) -> bool:
        """Neither revoked nor expired at `now` (its secret checked apart)."""
        return not self.revoked and not self.expired(now)

    def view(self) -> dict[str, object]:
        """What the admin API shows: never the hash."""
        data = self.model_dump(exclude={"secret_hash"})
        data["created_at"] = rfc3339(self.created_at)
        data["expires_at"] = None if self.expires_at is None else rfc3339(self.expires_at)
        return data


# The last second a datetime can say: a record stored past it (an expiry the API took before
# 2026-12-06) is shown as this, not a 500 for every listing it is in.
_LAST_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(min(ts, _LAST_TS), UTC).isoformat().replace("+00:00", "Z")
