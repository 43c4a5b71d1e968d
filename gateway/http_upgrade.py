"""A request asking to switch protocols (`Upgrade: h2c`, `websocket`) is served as the HTTP/1.1
request it also is: its `Upgrade` header is taken out of its head before httptools reads it.

httptools (llhttp) treats a request with `Upgrade` and `Connection: upgrade` as the end of
HTTP on the connection: it ends the request at its head, without its body, and stops; uvicorn
warns and goes on reading, so the body was lost (a 400 "body is empty") and, when it came in a
later read, parsed as requests of its own: a body could carry other requests past whatever a
proxy in front had checked. `curl --http2` on an http:// URL and Java's HttpClient send such
requests (`Upgrade: h2c`) with every POST. RFC 9110 §7.8 lets a server ignore an upgrade it
does not support, and the gateway supports none (it serves no WebSocket).

The head is read line by line: a line that has not ended yet is held until the next read, so
that a header split across reads is seen whole, and once the head's blank line has come the
rest of the read (the body) goes on untouched.
"""

from __future__ import annotations

import re

# A header line naming `Upgrade` (a field name is case-insensitive), through its line end; the
# held line always begins a line, so `^` finds header names only (a request line's method
# cannot hold a colon).
_UPGRADE_LINE = re.compile(rb"^upgrade:[^\n]*\n", re.IGNORECASE | re.MULTILINE)
# Whether a head names it past its first line: the same search without `^` (a line start)
# and IGNORECASE, which the regex engine makes a scan for the line end: ~0.8 µs for a 700-byte
# head, against ~4 µs for _UPGRADE_LINE's (the check every request makes).
_UPGRADE_AFTER_LINE_END = re.compile(rb"\n[uU][pP][gG][rR][aA][dD][eE]:")
_NAME = b"upgrade:"
_BLANK_LINE = b"\r\n\r\n"


class UpgradeDropped:
    """The reads of one request's head as httptools is to see them: without `Upgrade`."""

    def __init__(self) -> None:
        self.held = b""  # the start of a line not ended yet

    def feed(self, data: bytes, *, begun: bool) -> bytes:
        """What of `data` goes to the parser now: the complete lines of the head without
        `Upgrade`, and, once the head's blank line has come, the rest of `data` as it is.
        `begun`: a line of this head went to the parser already (so a read that starts with
        a line end ends the head; before the request line, an empty line is only that)."""
        if not self.held:  # (most heads: whole in one read, without Upgrade: not copied)
            whole = data.find(_BLANK_LINE)
            if whole != -1 and not _names_upgrade(data, whole + 2):
                return data
        data = self.held + data
        self.held = b""
        end = data.find(_BLANK_LINE)
        if end != -1:
            end += len(_BLANK_LINE)
        elif begun and data.startswith((b"\r\n", b"\n")):
            end = 1 if data.startswith(b"\n") else 2  # (a bare LF: the parser refuses it)
        if end != -1:
            return _UPGRADE_LINE.sub(b"", data[:end]) + data[end:]
        cut = data.rfind(b"\n") + 1
        self.held = data[cut:]
        return _UPGRADE_LINE.sub(b"", data[:cut])


def _names_upgrade(data: bytes, end: int) -> bool:
    """Whether a line of data[:end] (each begins it or follows a line end) names `Upgrade`."""
    return (
        data[: len(_NAME)].lower() == _NAME
        or _UPGRADE_AFTER_LINE_END.search(data, 0, end) is not None
    )
