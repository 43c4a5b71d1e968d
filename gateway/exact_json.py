"""Request bodies read and written as JSON without changing a number.

orjson reads an integer beyond 64 bits as a float (2**64 comes back as 1.8446744073709552e19)
and cannot write one, while vLLM's own parser keeps every integer exact. A body whose bytes hold
a run of 19 digits (an integer below -2**63 has 19 or more, one above 2**64 20) is therefore
read by the standard library, which keeps them as Python ints, and written by it when orjson
cannot; every other body (all but a few) stays on orjson. Depth: orjson writes at most 254
levels of nesting.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 254  # of nested arrays and objects, the whole body counted: what orjson writes
_LONG_DIGITS = re.compile(rb"\d{19}")


class TooDeep(ValueError):
    """The value nests arrays and objects deeper than MAX_DEPTH."""


def loads(raw: bytes) -> Any:
    """The parsed value; orjson's JSONDecodeError when `raw` is not JSON."""
    value = orjson.loads(raw)
    if _LONG_DIGITS.search(raw) is None:
        return value
    try:
        return json.loads(raw)  # valid (orjson read it): only its integers can differ
    except RecursionError:  # deeper than the standard library reads, yet within orjson's 1,024
        raise TooDeep from None


def dumps(value: Any) -> bytes:
    """`value` as compact JSON (as orjson writes it); TooDeep past MAX_DEPTH."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds" not in str(exc):
            raise TooDeep from exc
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:
        raise TooDeep from None
