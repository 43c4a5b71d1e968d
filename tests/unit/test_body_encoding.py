"""Content codings undone before a body is read (gateway/api/body_encoding.py)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.api.body_encoding import decode_body
from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

DATA = b'{"model": "m", "prompt": "' + b"hello " * 1000 + b'"}'


def test_no_coding_or_identity_is_the_body_as_sent() -> None:
    assert decode_body(DATA, None, 100) is DATA  # no bound past the read's own
    assert decode_body(DATA, "identity", 10**6) == DATA


def test_codings_are_undone_last_first() -> None:
    twice = zlib.compress(gzip.compress(DATA))  # gzip applied first, then deflate
    assert decode_body(twice, "gzip, deflate", 10**6) == DATA
    with pytest.raises(InvalidRequest, match="not valid gzip"):
        decode_body(twice, "deflate, gzip", 10**6)


def test_every_gzip_member_is_read_and_the_bound_counts_them_all() -> None:
    members = gzip.compress(DATA[:100]) + gzip.compress(DATA[100:])
    assert decode_body(members, "x-gzip", len(DATA)) == DATA
    with pytest.raises(PayloadTooLarge, match=f"limit of {len(DATA) - 1} bytes"):
        decode_body(members, "gzip", len(DATA) - 1)


def test_a_bomb_stops_at_the_bound() -> None:
    bomb = gzip.compress(b" " * 50_000_000)  # ~50 KB that decode to 50 MB
    with pytest.raises(PayloadTooLarge, match="decoded from gzip"):
        decode_body(bomb, "gzip", 65_536)


@pytest.mark.parametrize(
    ("data", "coding", "says"),
    [
        (gzip.compress(DATA)[:-8], "gzip", "it ends before its compressed stream does"),
        (zlib.compress(DATA) + b"junk", "deflate", "bytes follow its compressed stream"),
        (gzip.compress(DATA) + b"junk", "gzip", "not valid gzip"),
        (DATA, "gzip", "not valid gzip"),
    ],
)
def test_a_broken_stream_is_a_400_naming_its_coding(data: bytes, coding: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as refused:
        decode_body(data, coding, 10**6)
    assert refused.value.code == "invalid_content_encoding"


@pytest.mark.parametrize("coding", ["br", "zstd", "compress"])
def test_a_coding_it_cannot_undo_is_a_415_naming_it(coding: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"Content-Encoding '{coding}'") as refused:
        decode_body(DATA, f"gzip, {coding}", 10**6)
    assert refused.value.status_code == 415
