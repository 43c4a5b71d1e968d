"""The tables the client commands print (keys, tenants, engines, usage, files, jobs): one row a
record, columns padded, times in UTC, nothing shown as "-"."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

# Columns that hold Unix seconds (as the API gives them; --json keeps them so): a table shows
# them as UTC times.
TIME_COLUMNS = frozenset({"created_at", "expires_at", "finished_at"})


def utc_time(seconds: int) -> str:
    """Unix seconds as a table shows them: 2026-12-03T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def display_width(text: str) -> int:
    """The terminal columns `text` takes, which is what a table pads to: a wide character (CJK,
    a key named 日本語チーム) takes two, a combining mark none, so padding by len() shifted
    every column after it. (Control and format characters are kept out of names: unprintable.)"""
    return sum(_char_width(char) for char in text)


def _char_width(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    def cell(value: Any, column: str = "") -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):  # as --json says it (Python's True/False was shown)
            return "true" if value else "false"
        if column in TIME_COLUMNS and type(value) is int:
            return utc_time(value)
        if value == []:  # an allow-list of nothing: not the "-" of no list (everything)
            return "(none)"
        return ",".join(value) if isinstance(value, list) else str(value)

    grid = [list(columns)] + [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max(display_width(r[i]) for r in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v + " " * (w - display_width(v)) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in grid
    )
