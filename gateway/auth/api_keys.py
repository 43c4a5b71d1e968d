"""API key format and hashing: `sk-llmaas-<id>-<secret>`, only HMAC-SHA256(pepper, secret) stored.

The public id makes lookup a single read and a leaked key easy to spot (and to grep for); the
secret is 192 random bits; comparisons are constant-time.
"""

from __future__ import annotations

import hmac
import re
import secrets

PREFIX = "sk-llmaas-"
_ID_BYTES = 6  # 12 hex characters
_SECRET_BYTES = 24  # 48 hex characters
_KEY = re.compile(rf"{PREFIX}([0-9a-f]{{{2 * _ID_BYTES}}})-([0-9a-f]{{{2 * _SECRET_BYTES}}})")


def new_key_id() -> str:
    return secrets.token_hex(_ID_BYTES)


def new_secret() -> str:
    return secrets.token_hex(_SECRET_BYTES)


def format_key(key_id: str, secret: str) -> str:
    return f"{PREFIX}{key_id}-{secret}"


def parse_key(text: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


_SECRET_AFTER_ID = re.compile(rf"({PREFIX}[0-9a-f]{{{2 * _ID_BYTES}}}-)[^/?#\s]+")


def masked(text: str) -> str:
    """`text` (a URL path, a message) with the secret of any key in it cut to "…"."""
    return _SECRET_AFTER_ID.sub(r"\1…", text) if PREFIX in text else text


def hash_secret(pepper: bytes, secret: str) -> str:
    """HMAC-SHA256 of the secret under the pepper, hex (what key records store)."""
    return hmac.digest(pepper, secret.encode(), "sha256").hex()


def secret_matches(pepper: bytes, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)
