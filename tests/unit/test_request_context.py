from __future__ import annotations

from gateway.request_context import request_id_from


def test_sane_client_request_id_is_kept() -> None:
    assert request_id_from(b"abc-123_x.y:z") == "abc-123_x.y:z"


def test_missing_or_unsafe_ids_are_replaced() -> None:
    for header in (None, b"", b"has space", b"x" * 129, b"new\nline", b"\xff\xfe"):
        rid = request_id_from(header)
        assert len(rid) == 32
        assert rid.isalnum()
