from __future__ import annotations

from gateway.request_context import request_info


def test_sane_client_request_id_is_kept_and_the_engine_gets_the_gateways() -> None:
    info = request_info(b"abc-123_x.y:z")
    assert info.request_id == "abc-123_x.y:z"
    assert info.engine_request_id is not None
    assert len(info.engine_request_id) == 32
    assert info.engine_request_id != request_info(b"abc-123_x.y:z").engine_request_id


def test_missing_or_unsafe_ids_are_replaced() -> None:
    for header in (None, b"", b"has space", b"x" * 129, b"new\nline", b"\xff\xfe"):
        info = request_info(header)
        assert len(info.request_id) == 32
        assert info.request_id.isalnum()
        assert info.engine_request_id is None  # the gateway's id is the engine's too
