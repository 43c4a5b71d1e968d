"""UpgradeDropped: a request head's `Upgrade` lines taken out before httptools reads them,
however the reads split the head, and nothing after the head's blank line touched."""

from __future__ import annotations

import pytest

from gateway.http_upgrade import UpgradeDropped

BODY = b'{"model":"m","messages":[{"role":"user","content":"upgrade: h2c\\r\\n"}]}'
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
    b"UPGRADE: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    b"content-length: %d\r\n\r\n" % len(BODY)
)
WITHOUT = HEAD.replace(b"UPGRADE: h2c\r\n", b"")


def fed(reads: list[bytes]) -> bytes:
    """What the parser is given of `reads`, read one after the other as one head and body."""
    upgrades = UpgradeDropped()
    given = b""
    in_head = True
    for read in reads:
        if not in_head:
            given += read
            continue
        given += upgrades.feed(read, begun=given != b"")
        in_head = b"\r\n\r\n" not in given
    return given + upgrades.held


@pytest.mark.parametrize("cut", range(1, len(HEAD) + len(BODY)))
def test_the_upgrade_line_is_taken_out_wherever_the_reads_split(cut: int) -> None:
    whole = HEAD + BODY
    assert fed([whole[:cut], whole[cut:]]) == WITHOUT + BODY


def test_a_head_a_byte_at_a_time_loses_its_upgrade_line_and_nothing_else() -> None:
    whole = HEAD + BODY
    assert fed([whole[i : i + 1] for i in range(len(whole))]) == WITHOUT + BODY


def test_a_body_that_looks_like_a_header_is_left_as_it_is() -> None:
    body = b"x\r\nupgrade: h2c\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nupgrade: h2c\r\ncontent-length: %d\r\n\r\n" % len(body)
    assert UpgradeDropped().feed(head + body, begun=False) == (
        b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    )


def test_a_line_not_ended_is_held_until_it_is_and_a_head_without_upgrade_is_untouched() -> None:
    upgrades = UpgradeDropped()
    assert upgrades.feed(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-up", begun=False) == (
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
    )
    assert upgrades.held == b"x-up"
    assert upgrades.feed(b"grade: 1\r\n\r\n", begun=True) == b"x-upgrade: 1\r\n\r\n"
    assert upgrades.held == b""


def test_the_blank_line_that_begins_a_read_ends_the_head_only_once_the_head_has_begun() -> None:
    assert UpgradeDropped().feed(b"\r\nupgrade: x\r\n", begun=True) == b"\r\nupgrade: x\r\n"
    upgrades = UpgradeDropped()  # an empty line before a request line: the head goes on
    assert upgrades.feed(b"\r\nGET / HTTP/1.1\r\nupgrade: x\r\n", begun=False) == (
        b"\r\nGET / HTTP/1.1\r\n"
    )


def test_a_whole_head_without_upgrade_is_handed_on_as_it_came() -> None:
    """The common case, on every request: nothing copied."""
    read = WITHOUT + BODY
    assert UpgradeDropped().feed(read, begun=False) is read
    for name in (b"upgrade", b"uPgRaDe"):  # (a field name's case is no matter)
        read = HEAD.replace(b"UPGRADE", name) + BODY
        assert UpgradeDropped().feed(read, begun=False) == WITHOUT + BODY
    second = HEAD[HEAD.index(b"UPGRADE") :]  # a read that begins with the line, the head begun
    assert (
        UpgradeDropped().feed(second.replace(b"UPGRADE", b"Upgrade"), begun=True)
        == (WITHOUT[WITHOUT.index(b"http2-settings") :])
    )
    unlike = WITHOUT.replace(b"host: x", b"x-upgrade: 1\r\nhost: x") + BODY
    assert UpgradeDropped().feed(unlike, begun=False) is unlike
