"""Characters a name must not carry to a terminal or a table: control characters, invisible
format characters (bidi overrides, zero-width spaces, a byte order mark), surrogates,
private-use characters and the Unicode line and paragraph separators. Labels the admin API
takes refuse them; an uploaded file's name (the client's to choose) has them replaced."""

from __future__ import annotations

import unicodedata

# (Zl, Zp: U+2028 and U+2029 end a line for Python's str.splitlines and for terminals)
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


def has_unprintable(value: str) -> bool:
    return any(unicodedata.category(c) in _UNPRINTABLE for c in value)


def printable(value: str, replacement: str = "_") -> str:
    """`value` with each unprintable character replaced."""
    if not has_unprintable(value):
        return value
    return "".join(replacement if unicodedata.category(c) in _UNPRINTABLE else c for c in value)
