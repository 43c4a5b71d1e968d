"""The client commands' tables: columns line up on a terminal, whatever the names hold."""

from __future__ import annotations

import pytest

from gateway.cli_table import display_width, table


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("ops", 3),
        ("日本語チーム", 12),  # wide (W)
        ("\uff21\uff22", 4),  # fullwidth A and B (F)
        ("ｱｲ", 2),  # halfwidth katakana (H): one column each
        ("cafe\u0301", 4),  # e and a combining acute accent: one column
        ("", 0),
    ],
)
def test_display_width_counts_terminal_columns(text: str, width: int) -> None:
    assert display_width(text) == width


def test_a_wide_name_keeps_the_columns_after_it_aligned() -> None:
    """Found by review 2026-12-06: cells were padded by len(), so in a row holding wide
    characters (a key named 日本語チーム) every column after them stood right of the others'."""
    rows = [
        {"id": "k1", "name": "日本語チーム", "tenant": "acme"},
        {"id": "k2", "name": "ops", "tenant": "acme"},
        {"id": "k3", "name": "cafe\u0301", "tenant": "acme"},
    ]
    lines = table(rows, ("id", "name", "tenant")).splitlines()
    starts = [
        display_width(line[: line.index(last)])
        for line, last in zip(lines, ["tenant", *["acme"] * 3], strict=True)
    ]
    assert starts == [4 + 12 + 2] * 4, "\n".join(lines)
