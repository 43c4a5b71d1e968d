"""A usage query's `start` and `end` as the gateway reads them: the usage API and `llmaas usage`
both parse them here, so what the command accepts before sending, the gateway accepts too."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

MAX_DAYS = 400
DEFAULT_DAYS = 30

# A whole UTC day: as an end, it runs to the day's last millisecond (Unix seconds, also ten
# characters these years, are one moment).
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Eight digits (YYYYMMDD, ISO 8601's basic form) read as Unix seconds were a moment of 1970:
# refused, naming the forms taken. Unix seconds of these years have ten digits.
_BASIC_DAY = re.compile(r"(19|20)\d{6}")


class BoundError(ValueError):
    """A `start` or `end` refused: `param` names which (the API's parameter, the command's
    option), the message says why in words that fit after either."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(reason)
        self.param = param


def parse_time(value: str) -> datetime:
    """YYYY-MM-DD, RFC 3339 (with a zone; `t` and `z` as RFC 3339 allows), or Unix seconds;
    ValueError saying which forms are taken."""
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
        raise ValueError(
            "expected YYYY-MM-DD, RFC 3339 with a time zone (2026-11-01T00:00:00Z) or Unix "
            f"seconds; got {value!r}"
        )
    return parsed.astimezone(UTC)


def _moment(value: str, param: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BoundError(param, str(exc)) from None


def day_bound(value: str, param: str) -> date:
    """A bound of usage totals, which are kept per UTC day: a date (an `end` day counted
    whole), or a moment at a day's start (an `end` there ends the day before, as on
    /usage/records, which does not reach past it). A moment within a day is refused: it was
    widened to the whole day, so a month given as [Nov 1 00:00, Dec 1 00:00) billed Dec 1."""
    moment = _moment(value, param)
    if _DAY.fullmatch(value):
        return moment.date()
    if moment != datetime.combine(moment.date(), datetime.min.time(), UTC):
        raise BoundError(
            param,
            "usage totals are per UTC day; give a date (YYYY-MM-DD) or a time at 00:00:00Z "
            "(records take any time)",
        )
    return moment.date() - timedelta(1) if param == "end" else moment.date()


def check_days(first: date, last: date) -> None:
    """Totals' days in order, and at most MAX_DAYS of them (the work of one query)."""
    if first > last:
        raise BoundError("start", "the start is after the end")
    if (last - first).days >= MAX_DAYS:
        raise BoundError("start", f"the range covers more than {MAX_DAYS} days; narrow it")


def total_days(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """The UTC days of a totals query, the last DEFAULT_DAYS up to `today` when not given."""
    last = day_bound(end, "end") if end else today
    first = day_bound(start, "start") if start else last - timedelta(DEFAULT_DAYS - 1)
    if not end and first > last:  # a start past today (a client's own date ahead of UTC's)
        last = first  # is its day, with no usage yet: not an 'end' the client never gave
    check_days(first, last)
    return first, last


def _ms(value: str | None, param: str, *, end: bool) -> int | None:
    if not value:
        return None
    moment = _moment(value, param)
    if end and _DAY.fullmatch(value):  # a whole day: up to its last millisecond
        moment += timedelta(days=1)
    if end:  # up to, not at, the moment: as totals' end=…T00:00:00Z ends the day before, so a
        # month's records and the next month's never both hold a record of its last millisecond
        moment -= timedelta(milliseconds=1)
    return max(0, int(moment.timestamp() * 1000))  # the ledger has nothing before 1970


def record_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """Raw records' range in ms, each end None when not given: from `start`, up to (not at)
    `end`. start == end is an empty range; a start after the end is refused (was an empty
    page)."""
    start_ms = _ms(start, "start", end=False)
    end_ms = _ms(end, "end", end=True)
    if start_ms is not None and end_ms is not None and start_ms > end_ms + 1:
        raise BoundError("start", "the start is after the end")
    return start_ms, end_ms
