"""Usage queries: the admin's view of every tenant, and each tenant's view of its own usage.

GET /admin/v1/usage             totals grouped by tenant / key_id / model / day
GET /admin/v1/usage/records     raw records, a page at a time (JSON lines or CSV)
GET /v1/usage, /v1/usage/records  the same, with the caller's own key, for its tenant only
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Query
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.responses import Response

from gateway.api.admin import require_admin
from gateway.api.responses import json_response
from gateway.csv_cells import safe_cell
from gateway.deps import Caller, Gateway
from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.metering.group_by import DEFAULT_GROUP_BY, parse_group_by
from gateway.metering.ledger import DAY_MS
from gateway.metering.query import Cursor, UsageFilter, records_page, usage_totals
from gateway.metering.record import CSV_COLUMNS, TENANT_COLUMNS, UsageRecord
from gateway.metering.time_range import BoundError, record_range, total_days
from gateway.redis_client import redis_error
from gateway.state import GatewayState

admin_router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])
tenant_router = APIRouter(prefix="/v1")

Text = Annotated[str | None, Query()]
Format = Annotated[Literal["jsonl", "csv"], Query()]
Limit = Annotated[int, Query(ge=1, le=10_000)]


def _group_by(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_GROUP_BY
    try:
        return parse_group_by(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid 'group_by': {exc}.", param="group_by", code="invalid_value"
        ) from None


def _bound_refused(exc: BoundError) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{exc.param}': {exc}.", param=exc.param, code="invalid_value")


def _redis(gw: GatewayState) -> Redis:
    if gw.redis is None:
        raise ServiceUnavailable(
            "Usage is kept in Redis (redis_url), and none is configured.",
            code="no_ledger",
            headers={"x-should-retry": "false"},  # no wait makes one
        )
    return gw.redis


@dataclass(slots=True)
class Selection:
    """Which usage: one key, one model, a time range (all optional)."""

    key_id: Text = None
    model: Text = None
    start: Text = None
    end: Text = None

    def where(self, tenant: str | None) -> UsageFilter:
        # An empty parameter (`key_id=`, as a form sends it) is no filter, as for start / end,
        # not a filter that matches nothing.
        return UsageFilter(tenant, self.key_id or None, self.model or None)


@dataclass(slots=True)
class Page:
    """A page of raw records: after the previous page's x-next-cursor, at most `limit`."""

    after: Text = None
    limit: Limit = 1000
    format: Format = "jsonl"


Selected = Annotated[Selection, Depends()]
Paged = Annotated[Page, Depends()]


async def _totals(
    gw: GatewayState, selection: Selection, tenant: str | None, group: str | None
) -> Response:
    try:
        first, last = total_days(selection.start, selection.end, datetime.now(UTC).date())
    except BoundError as exc:
        raise _bound_refused(exc) from None
    groups = _group_by(group)
    redis = _redis(gw)
    try:
        rows = await usage_totals(
            redis, selection.where(tenant), first, last, groups, retention_ms=_retention_ms(gw)
        )
    except RedisError as exc:
        raise _ledger_unreachable(exc) from exc
    return json_response(
        {
            "object": "list",
            "start": first.isoformat(),
            "end": last.isoformat(),
            "group_by": list(groups),
            "data": rows,
        }
    )


async def _records(
    gw: GatewayState,
    selection: Selection,
    tenant: str | None,
    page: Page,
    columns: tuple[str, ...] = CSV_COLUMNS,
) -> Response:
    try:
        cursor = Cursor.parse(page.after) if page.after else None
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid 'after': {exc}.", param="after", code="invalid_value"
        ) from exc
    try:
        start_ms, end_ms = record_range(selection.start, selection.end)
    except BoundError as exc:
        raise _bound_refused(exc) from None
    redis = _redis(gw)
    try:
        records, following = await records_page(
            redis,
            selection.where(tenant),
            start_ms=start_ms,
            end_ms=end_ms,
            after=cursor,
            limit=page.limit,
            retention_ms=_retention_ms(gw),
        )
    except RedisError as exc:
        raise _ledger_unreachable(exc) from exc
    headers = {} if following is None else {"x-next-cursor": str(following)}
    if page.format == "csv":
        return Response(_csv(records, columns), headers=headers, media_type="text/csv")
    body = b"".join(orjson.dumps(r.view(columns)) + b"\n" for r in records)
    return Response(body, headers=headers, media_type="application/x-ndjson")


def _retention_ms(gw: GatewayState) -> int:
    return int(gw.settings.metering.retention_days * DAY_MS)


def _csv(records: list[UsageRecord], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:  # JSON's true / false, as CSV readers expect (not Python's True)
        row = record.view(columns)
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: object) -> object:
    return ("true" if value else "false") if isinstance(value, bool) else safe_cell(value)


@admin_router.get("/usage", response_model=None)
async def admin_usage(
    gw: Gateway, selection: Selected, tenant: Text = None, group_by: Text = None
) -> Response:
    return await _totals(gw, selection, tenant or None, group_by)


@admin_router.get("/usage/records", response_model=None)
async def admin_usage_records(
    gw: Gateway, selection: Selected, page: Paged, tenant: Text = None, group_by: Text = None
) -> Response:
    _ungrouped(group_by)
    return await _records(gw, selection, tenant or None, page)


@tenant_router.get("/usage", response_model=None)
async def tenant_usage(
    gw: Gateway, caller: Caller, selection: Selected, group_by: Text = None, tenant: Text = None
) -> Response:
    """The caller's tenant's usage (every key of it), never another tenant's."""
    _own(tenant, caller.tenant)
    return await _totals(gw, selection, caller.tenant, group_by)


@tenant_router.get("/usage/records", response_model=None)
async def tenant_usage_records(
    gw: Gateway,
    caller: Caller,
    selection: Selected,
    page: Paged,
    *,
    group_by: Text = None,
    tenant: Text = None,
) -> Response:
    _own(tenant, caller.tenant)
    _ungrouped(group_by)
    return await _records(gw, selection, caller.tenant, page, TENANT_COLUMNS)


def _own(asked: str | None, tenant: str) -> None:
    """`tenant=` on the tenant routes names the caller's own, or is a 400: another tenant's
    was ignored, the caller's own totals answered under a 200 (a script written for the admin
    route read them as the other tenant's)."""
    if asked and asked != tenant:
        raise InvalidRequest(
            f"Invalid 'tenant': this key answers for its own tenant ('{tenant}') only; "
            "/admin/v1/usage (the admin token) answers for any.",
            param="tenant",
            code="invalid_value",
        )


def _ungrouped(group_by: str | None) -> None:
    """A record is one request: a group_by beside records was ignored, so a client took raw
    records for the totals it asked for."""
    if group_by:
        raise InvalidRequest(
            "Invalid 'group_by': records are one per request and never grouped; /usage "
            "answers totals grouped by it.",
            param="group_by",
            code="invalid_value",
        )


def _ledger_unreachable(exc: RedisError) -> ServiceUnavailable:
    """The retryable 503 of a usage query whose Redis read failed; the cause goes to the log."""
    logging.getLogger("llmaas.usage").warning(
        "usage query failed", extra={"fields": {"error": redis_error(exc)}}
    )
    return ServiceUnavailable(
        "The usage ledger is unreachable right now; try again shortly.",
        code="usage_ledger_unavailable",
        headers={"retry-after": "1"},
    )
