"""gateway/auth/api_keys.py: the digest stored for a secret never changes with the code."""

from __future__ import annotations

import hashlib
import hmac

from gateway.auth.api_keys import hash_secret, new_secret, secret_matches


def test_the_digest_is_hmac_sha256_hex_of_the_secret_under_the_pepper() -> None:
    # Keys issued by earlier versions are stored as this digest: it must stay the same value.
    secret = new_secret()
    expected = hmac.new(b"pepper", secret.encode(), hashlib.sha256).hexdigest()
    assert hash_secret(b"pepper", secret) == expected
    assert hash_secret(b"pepper", "abc") == (
        "95ac8d48c4886bae06029b433c46c419019bf03a65a842069d84b7755b1d08c4"
    )
    assert secret_matches(b"pepper", secret, expected)
    assert not secret_matches(b"other pepper", secret, expected)
