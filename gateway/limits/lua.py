"""The Lua scripts of limits and metering, as sent to Redis: each with bucket.lua in front.

Redis runs a script as one chunk and has no `require`, so the token bucket's reading and
writing, which admission.lua, settle.lua and release.lua share, is put before each of them.
"""

from __future__ import annotations

from pathlib import Path

_BUCKET = Path(__file__).parent / "bucket.lua"


def with_bucket(script: Path) -> str:
    """`script`'s source with the bucket's functions (bucket_read, bucket_write) before it."""
    return _BUCKET.read_text() + script.read_text()
