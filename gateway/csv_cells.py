"""CSV cells a spreadsheet would take for a formula, kept as text: a cell that begins with `=`,
`+`, `-`, `@`, a tab or a carriage return gets a leading apostrophe (OWASP's advice on CSV
injection). Usage exports carry values a client chose (a JWT subject, a request id), and an
operator opens them in a spreadsheet."""

from __future__ import annotations

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """`value` as a CSV cell: numbers as they are, text that would start a formula as text."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
