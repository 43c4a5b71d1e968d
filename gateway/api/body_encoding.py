"""A request body sent compressed (`Content-Encoding: gzip` or `deflate`, as HTTP clients and
proxies may send a large prompt), decoded before it is read: the engine gets it as JSON.

The bound on a body holds for what it decodes to as well as for what came over the wire, and
decoding stops as soon as it is passed, so a small body that inflates to gigabytes costs no
more memory than one at the bound. An encoding the gateway cannot decode is a 415 naming it
(the body used to reach the JSON parser as it came, and be refused as text that is not UTF-8).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_IDENTITY = ("", "identity")
# Codings one body may carry: clients send one. Each is inflated in turn up to the body's
# bound, so a few KB of `gzip, gzip, …` over a body nested as deep held the event loop for
# each of them.
MAX_CODINGS = 2


def content_encoding(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """A request's Content-Encoding, its lines joined (RFC 9110 5.3: a gzip on a second line
    was left encoded), unless it is none or `identity`."""
    lines = [v.decode("latin-1") for n, v in headers if n == b"content-encoding"]
    joined = ", ".join(lines)
    if all(c.strip().lower() in _IDENTITY for c in joined.split(",")):
        return None
    return joined


def decode_body(raw: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """`raw` with its content codings undone, last applied first (RFC 9110 8.4)."""
    if content_encoding is None or not raw:  # (no body: nothing was encoded)
        return raw
    codings = [c for c in (c.strip().lower() for c in content_encoding.split(",")) if c]
    codings = [c for c in codings if c not in _IDENTITY]
    if len(codings) > MAX_CODINGS:
        raise UnsupportedMediaType(
            f"The request body carries {len(codings)} content codings; send it compressed "
            f"once (at most {MAX_CODINGS} codings).",
            code="unsupported_content_encoding",
        )
    for coding in reversed(codings):
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise UnsupportedMediaType(
                f"Content-Encoding '{coding}' is not supported: send the body as gzip, deflate "
                "or uncompressed.",
                code="unsupported_content_encoding",
            )
        raw = _inflate(raw, coding, wbits, max_bytes)
    return raw


def _inflate(data: bytes, coding: str, wbits: int, max_bytes: int) -> bytes:
    """Every member of a gzip body (they may be concatenated), at most `max_bytes` of them."""
    out: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            while data:
                chunk = inflater.decompress(data, max_bytes + 1 - size)
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"The request body, decoded from {coding}, is larger than the limit of "
                        f"{max_bytes} bytes.",
                        code="request_too_large",
                    )
                out.append(chunk)
                data = inflater.unconsumed_tail
        except zlib.error as exc:
            raise _broken(coding, str(exc)) from exc
        if not inflater.eof:
            raise _broken(coding, "it ends before its compressed stream does")
        data = inflater.unused_data if coding != "deflate" else _no_trailer(inflater, coding)
    return b"".join(out)


def _no_trailer(inflater: zlib._Decompress, coding: str) -> bytes:
    if inflater.unused_data:
        raise _broken(coding, "bytes follow its compressed stream")
    return b""


def _broken(coding: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"The request body is not valid {coding} (its Content-Encoding): {why}.",
        code="invalid_content_encoding",
    )
