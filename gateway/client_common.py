"""What the admin and tenant clients share that needs no HTTP library: their errors and an id
made one segment of a path. The client commands catch these and build their paths with them;
they import the clients themselves (aiohttp) only when they run: `llmaas --help` stays fast."""

from __future__ import annotations

from urllib.parse import quote


class AdminError(Exception):
    """The admin API refused, or could not be reached; the message says which and why."""


class LocalProblem(AdminError):
    """Found before anything is sent (no token or key to send, a local file that cannot be
    read): a usage error, as a bad option is (exit 2), not the gateway's refusal (exit 1)."""


def segment(value: str) -> str:
    """An id as one segment of a path: `/`, `?`, `#` and `..` in it stay in it (an id that is
    `.` or `..` percent-encoded, which the gateway reads back as it was)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted
