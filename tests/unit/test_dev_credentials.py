"""`llmaas up`'s kept key and admin token: written whole and for its owner only, read back, and
nothing (not an error) when missing or unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded.dev_credentials import DevCredentials, admin_token, keep, kept


def test_kept_credentials_are_read_back_and_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "made" / "credentials.json"
    credentials = DevCredentials("sk-llmaas-abc-def", "token-0123456789")
    keep(path, credentials)
    assert kept(path) == credentials
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no partial left
    keep(path, DevCredentials("sk-llmaas-new-one", "token-0123456789"))
    assert kept(path) == DevCredentials("sk-llmaas-new-one", "token-0123456789")


@pytest.mark.parametrize("text", [None, "", "{", "[]", '{"api_key": "k"}'])
def test_nothing_kept_or_unreadable_is_nothing(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "credentials.json"
    if text is not None:
        path.write_text(text)
    assert kept(path) is None


def test_the_kept_admin_token_is_used_else_a_new_one() -> None:
    assert admin_token(DevCredentials("k", "kept-token")) == "kept-token"
    made = {admin_token(None) for _ in range(3)}
    assert len(made) == 3
    assert all(len(token) >= 32 for token in made)
