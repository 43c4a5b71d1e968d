"""Secrets that do not match their key's stored digest, told to the operator at most once a
minute.

A wrong secret for a real key id is a client's mistake or a guess, and its 401 says enough to
the client. But a replica whose `key_pepper` differs from the one the keys were made with turns
every key away, and behind a load balancer some clients at random: its readiness and every
other line looked healthy, with nothing naming the cause. The count since the last line shows
which of the two it is (a whole replica's traffic, or a few).
"""

from __future__ import annotations

import logging
import math
import time

TELL_EVERY_S = 60.0


class SecretMismatches:
    def __init__(self) -> None:
        self.log = logging.getLogger("llmaas.auth")
        self.count = 0  # since the last line
        self.told_at = -math.inf  # monotonic

    def seen(self, key_id: str) -> None:
        """One more secret that did not match `key_id`'s digest; logged if none was for a
        minute."""
        self.count += 1
        now = time.monotonic()
        if now - self.told_at < TELL_EVERY_S:
            return
        self.log.warning(
            "an API key's secret does not match its stored digest: a wrong secret, or, if "
            "every key fails on this replica only, its key_pepper (LLMAAS_KEY_PEPPER) is not "
            "the one the keys were made with",
            extra={"fields": {"key_id": key_id, "mismatches": self.count}},
        )
        self.told_at = now
        self.count = 0
