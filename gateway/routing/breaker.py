"""An engine's circuit breaker: failures eject it with exponential back-off; /health ends it.

Times are `time.monotonic()` values passed in by the caller, so tests drive a controlled clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# connect: the TCP connection failed (ejects at once). The others count towards
# `failures_to_eject` consecutive failures: http_5xx (the engine answered 5xx), bad_answer (an
# answer the OpenAI API never gives, or not HTTP), timeout (no answer in time), disconnect (it
# closed the connection), health (its /health was not 200).
FailureKind = Literal["connect", "http_5xx", "bad_answer", "timeout", "disconnect", "health"]
IMMEDIATE: frozenset[str] = frozenset({"connect"})


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    base_s: float = 1.0  # the first ejection; each one that follows doubles it …
    max_s: float = 60.0  # … up to this; after this long up without ejection it starts again
    failures_to_eject: int = 3  # consecutive failures that are not connect errors

    def backoff(self, level: int) -> float:
        return float(min(self.base_s * 2.0 ** min(level, 62), self.max_s))


@dataclass(slots=True)
class Breaker:
    policy: BreakerPolicy = BreakerPolicy()
    ejected: bool = False
    until: float = 0.0  # while ejected: no probe before this time
    consecutive_failures: int = 0
    ejections: int = 0  # in all, for operators and metrics
    level: int = 0  # back-off exponent of the next ejection
    returned_at: float | None = None  # when it last came back from an ejection
    checks_only: bool = True  # every failure of the row so far was a failed health check

    def is_up(self) -> bool:
        return not self.ejected

    def failure(self, kind: FailureKind, now: float) -> bool:
        """A failure was observed; True when it ejected the engine just now."""
        first = self.consecutive_failures == 0
        self.checks_only = (first or self.checks_only) and kind == "health"
        self.consecutive_failures += 1
        if self.ejected:
            return False
        if kind in IMMEDIATE or self.consecutive_failures >= self.policy.failures_to_eject:
            self._eject(now)
            return True
        return False

    def success(self) -> None:
        """A request went through. It does not lift an ejection: only /health does."""
        if not self.ejected:
            self.consecutive_failures = 0

    def probe_due(self, now: float) -> bool:
        """Whether the health checker should ask this engine now (always, unless backing off)."""
        return not self.ejected or now >= self.until

    def probe_ok(self, now: float) -> bool:
        """/health answered 200; True when that brought the engine back. For an engine that
        is up, it ends a row of failed checks (three hours apart, thousands of good ones
        between them, are not three in a row), not one of failed requests: an engine whose
        answers time out may well answer /health."""
        if not self.ejected:
            if self.checks_only:
                self.consecutive_failures = 0
            return False
        if now < self.until:  # still backing off; the next probe after `until` decides
            return False
        self.ejected = False
        self.consecutive_failures = 0
        self.returned_at = now
        return True

    def probe_failed(self, kind: FailureKind, now: float) -> bool:
        """/health failed; an engine past its back-off stays out for another period of the
        same ejection. Not a longer one: doubling at every failed probe kept an engine that
        restarted in 30 s out for ~33 s more, and started its next ejection at 60 s."""
        if self.ejected:
            self.consecutive_failures += 1
            if now >= self.until:
                self.until = now + self.policy.backoff(self.level - 1)  # (_eject raised it)
            return False
        return self.failure("connect" if kind == "connect" else "health", now)

    def _eject(self, now: float) -> None:
        if self.returned_at is not None and now - self.returned_at >= self.policy.max_s:
            self.level = 0  # it had been up long enough: start again at base_s
        self.ejected = True
        self.until = now + self.policy.backoff(self.level)
        self.level += 1
        self.ejections += 1
