"""Usage queries: the admin's view of every tenant, and each tenant's view of its own usage.

GET /admin/v1/usage             totals grouped by tenant / key_id / model / day
GET /admin/v1/usage/records     raw records, a page at a time (JSON lines or CSV)
GET /v1/usage, /v1/usage/records  the same, with the caller's own key, for its tenant only
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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
from gateway.metering.ledger import DAY_MS
from gateway.metering.query import (
    DEFAULT_GROUP_BY,
    Cursor,
    UsageFilter,
    parse_group_by,
    records_page,
    usage_totals,
)
from gateway.metering.record import CSV_COLUMNS, TENANT_COLUMNS, UsageRecord
from gateway.state import GatewayState

admin_router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])
tenant_router = APIRouter(prefix="/v1")
MAX_DAYS = 400
DEFAULT_DAYS = 30

Text = Annotated[str | None, Query()]
Format = Annotated[Literal["jsonl", "csv"], Query()]
Limit = Annotated[int, Query(ge=1, le=10_000)]


# A whole UTC day: as an end, it runs to the day's last millisecond (Unix seconds, also ten
# characters these years, are one moment).
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Eight digits (YYYYMMDD, ISO 8601's basic form) read as Unix seconds were a moment of 1970:
# refused, naming the forms taken. Unix seconds of these years have ten digits.
_BASIC_DAY = re.compile(r"(19|20)\d{6}")


def _parse_time(value: str, param: str) -> datetime:
    """YYYY-MM-DD, RFC 3339 (with a zone; `t` and `z` as RFC 3339 allows), or Unix seconds."""
    parsed: datetime | None = None
    try:
        if _BASIC_DAY.fullmatch(value):  # 20261206: a day written without dashes, not 1970
            pass
        elif value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), UTC)
        elif _DAY.fullmatch(value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):  # also a number past the year 9999
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidRequest(
            f"Invalid '{param}': expected YYYY-MM-DD, RFC 3339 with a time zone "
            f"(2026-11-01T00:00:00Z) or Unix seconds; got {value!r}.",
            param=param,
            code="invalid_value",
        )
    return parsed.astimezone(UTC)


def _days(start: str | None, end: str | None) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    last = _day(end, "end") if end else today
    first = _day(start, "start") if start else last - timedelta(DEFAULT_DAYS - 1)
    if not end and first > last:  # a start past today (a client's own date ahead of UTC's)
        last = first  # is its day, with no usage yet: not an 'end' the client never gave
    if first > last:
        raise InvalidRequest("'start' is after 'end'.", param="start", code="invalid_value")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequest(
            f"The range covers more than {MAX_DAYS} days; narrow 'start' and 'end'.",
            param="start",
            code="invalid_value",
        )
    return first, last


def _day(value: str, param: str) -> date:
    """A bound of usage totals, which are kept per UTC day: a date (an `end` day counted
    whole), or a moment at a day's start (an `end` there ends the day before, as on
    /usage/records, which does not reach past it). A moment within a day is refused: it was
    widened to the whole day, so a month given as [Nov 1 00:00, Dec 1 00:00) billed Dec 1."""
    moment = _parse_time(value, param)
    if _DAY.fullmatch(value):
        return moment.date()
    if moment != datetime.combine(moment.date(), datetime.min.time(), UTC):
        raise InvalidRequest(
            f"Invalid '{param}': usage totals are per UTC day; give a date (YYYY-MM-DD) or a "
            "time at 00:00:00Z (/usage/records takes any time).",
            param=param,
            code="invalid_value",
        )
    return moment.date() - timedelta(1) if param == "end" else moment.date()


def _group_by(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_GROUP_BY
    try:
        return parse_group_by(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"Invalid 'group_by': {exc}.", param="group_by", code="invalid_value"
        ) from None


def _ms(value: str | None, param: str, *, end: bool) -> int | None:
    if not value:
        return None
    moment = _parse_time(value, param)
    if end and _DAY.fullmatch(value):  # a whole day: up to its last millisecond
        moment += timedelta(days=1)
    if end:  # up to, not at, the moment: as totals' end=…T00:00:00Z ends the day before, so a
        # month's records and the next month's never both hold a record of its last millisecond
        moment -= timedelta(milliseconds=1)
    return max(0, int(moment.timestamp() * 1000))  # the ledger has nothing before 1970


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
    first, last = _days(selection.start, selection.end)
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
    start_ms = _ms(selection.start, "start", end=False)
    end_ms = _ms(selection.end, "end", end=True)
    # (start == end: an empty range, a page of none; start after end: a 400, was an empty page)
    if start_ms is not None and end_ms is not None and start_ms > end_ms + 1:
        raise InvalidRequest("'start' is after 'end'.", param="start", code="invalid_value")
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
        "usage query failed", extra={"fields": {"error": type(exc).__name__, "detail": str(exc)}}
    )
    return ServiceUnavailable(
        "The usage ledger is unreachable right now; try again shortly.",
        code="usage_ledger_unavailable",
        headers={"retry-after": "1"},
    )
