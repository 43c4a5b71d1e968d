"""Reading a multipart upload (`file` and `purpose`) straight into storage, size-bounded.

The body is parsed as it arrives (python-multipart's streaming parser) and the file part is
written chunk by chunk, so an upload never sits in memory and one past the limit is cut off
as soon as it crosses it. Any failure discards what was written.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.files.storage import PartialFile
from gateway.unprintable import printable

MAX_FIELD_BYTES = 1024  # `purpose` and any other text field
MULTIPART_OVERHEAD = 64 * 1024  # allowed on top of the file in a declared Content-Length
# A file's growth between two looks at its tenant's bytes (an eighth of the largest, if less).
ROOM_EVERY = 8 * 1024 * 1024
_FIELDS = ("file", "purpose")


@dataclass(slots=True)
class Upload:
    partial: PartialFile
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Events:
    """What the parser's callbacks saw in the last chunk, in order (handled after it, async)."""

    items: list[bytes | dict[bytes, bytes]] = field(default_factory=list)  # data | headers
    name: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)

    def callbacks(self) -> dict[str, object]:
        def header_field(data: bytes, start: int, end: int) -> None:
            self.name += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self.value += data[start:end]

        def header_end() -> None:
            self.headers[bytes(self.name).lower()] = bytes(self.value)
            self.name.clear()
            self.value.clear()

        def headers_finished() -> None:
            self.items.append(self.headers)
            self.headers = {}

        def part_data(data: bytes, start: int, end: int) -> None:
            self.items.append(bytes(data[start:end]))

        return {
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": part_data,
        }


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Upload files as multipart/form-data with a 'file' part and a 'purpose' field.",
            code="invalid_content_type",
        )
    return boundary


async def receive_upload(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    partial: PartialFile,
    max_bytes: int,
    room: Callable[[int], Awaitable[None]] | None = None,
) -> Upload:
    """Write the `file` part to `partial` (not finished: the caller checks and commits it).
    `room(size)`, awaited each time the file grows past another step (ROOM_EVERY), may refuse
    it from there on by raising (the tenant's bytes in all)."""
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())  # type: ignore[arg-type, unused-ignore]
    reader = _Reader(Upload(partial), max_bytes, room)
    async for chunk in chunks:
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(
                f"The multipart body could not be parsed: {exc}.", code="invalid_multipart"
            ) from exc
        for payload in events.items:
            if isinstance(payload, dict):
                reader.begin(payload)
            else:
                await reader.data(payload)
        events.items.clear()
    parser.finalize()
    if parser.state != MultipartState.END:  # (finalize() says nothing of a body cut short)
        raise InvalidRequest(
            "The multipart body ends before its closing boundary: the upload was cut short.",
            code="invalid_multipart",
        )
    if not reader.seen_file:
        raise InvalidRequest("The upload has no 'file' part.", param="file", code="missing_file")
    return reader.upload


class _Reader:
    """Where each part's bytes go: the file's to storage, text fields' to memory (bounded)."""

    def __init__(
        self, upload: Upload, max_bytes: int, room: Callable[[int], Awaitable[None]] | None
    ) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.room = room
        self.step = min(ROOM_EVERY, max(1, max_bytes // 8))
        self.roomy_to = self.step  # the size up to which room was last found
        self.part: str | None = None
        self.seen_file = False

    def begin(self, headers: dict[bytes, bytes]) -> None:
        self.part = _part_name(headers)
        if self.part != "file":
            if self.part in self.upload.fields:  # which one was meant? (the last won, silently)
                raise InvalidRequest(
                    f"Send one '{self.part}' field.", param=self.part, code="invalid_multipart"
                )
            self.upload.fields[self.part] = ""
            return
        if self.seen_file:
            raise InvalidRequest("Send one 'file' part.", param="file", code="invalid_multipart")
        self.seen_file = True
        self.upload.filename = _filename(headers)

    async def data(self, payload: bytes) -> None:
        partial = self.upload.partial
        if self.part == "file":
            size = partial.size + len(payload)
            if size > self.max_bytes:
                raise too_large(self.max_bytes)
            if self.room is not None and size > self.roomy_to:
                self.roomy_to = size + self.step  # (past the tenant's bytes by a step at most)
                await self.room(size)
            await partial.write(payload)
        elif self.part is not None:
            value = self.upload.fields[self.part] + payload.decode("utf-8", "replace")
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"The field '{self.part}' is too long.", param=self.part, code="invalid_value"
                )
            self.upload.fields[self.part] = value


def too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The file is larger than the limit of {max_bytes} bytes.",
        param="file",
        code="file_too_large",
    )


def _part_name(headers: dict[bytes, bytes]) -> str:
    disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
    name = options.get(b"name", b"").decode("utf-8", "replace")
    if disposition != b"form-data" or not name:
        raise InvalidRequest(
            "Every multipart part needs a Content-Disposition with a name.",
            code="invalid_multipart",
        )
    if name not in _FIELDS:
        hint = "expires_after is not supported" if name.startswith("expires_after") else ""
        raise InvalidRequest(
            f"Unknown field '{name}': an upload takes 'file' and 'purpose'"
            + (f" ({hint})." if hint else "."),
            param=name,
            code="unknown_parameter",
        )
    return name


def _filename(headers: dict[bytes, bytes]) -> str:
    disposition = headers.get(b"content-disposition", b"")
    _, options = parse_options_header(disposition)
    extended = _extended_filename(disposition)
    raw = (
        extended
        if extended is not None
        else options.get(b"filename", b"").decode("utf-8", "replace")
    )
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()  # a name, never a path
    # (an escape or a bell reached `llmaas files list`'s terminal; a bidi override turned its
    # row around)
    name = printable(name)
    if not name:
        raise InvalidRequest(
            "The 'file' part needs a filename.", param="file", code="invalid_multipart"
        )
    return _shortened(name)


MAX_FILENAME = 255  # characters, as file systems take a name


def _shortened(name: str) -> str:
    """`name` within MAX_FILENAME characters, its extension kept (a `.jsonl` cut off left a
    file that no longer says what it holds)."""
    if len(name) <= MAX_FILENAME:
        return name
    stem, dot, extension = name.rpartition(".")
    if stem and dot and len(extension) < 16:
        return stem[: MAX_FILENAME - len(extension) - 1] + "." + extension
    return name[:MAX_FILENAME]


_EXTENDED = re.compile(rb"""(?:^|;)\s*filename\*\s*=\s*([^;\s]*)""", re.IGNORECASE)


def _extended_filename(disposition: bytes) -> str | None:
    """RFC 5987's `filename*=UTF-8''na%C3%AFve.jsonl`, which some clients send for a name
    that is not ASCII, alone or beside `filename` (which it then overrides, as RFC 6266 says)."""
    found = _EXTENDED.search(disposition)
    if found is None:
        return None
    charset, quote, encoded = found.group(1).decode("ascii", "replace").partition("'")
    _, quote, encoded = encoded.partition("'") if quote else ("", "", "")
    if not quote:
        raise InvalidRequest(
            "The 'file' part's filename* must be charset'language'percent-encoded-name.",
            param="file",
            code="invalid_multipart",
        )
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:
        raise InvalidRequest(
            f"The 'file' part's filename* names an unknown charset '{charset}'.",
            param="file",
            code="invalid_multipart",
        ) from None
