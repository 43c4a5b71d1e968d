"""A failure that repeats while something is away (Redis), logged once per outage.

A line per failure was the rest of an outage's log: thousands a second for requests answered
without the rate limiter, a line per tick for the whole of a hang for lease renewals. So the
first failure is a warning, the rest are counted, and the first success after them is one
line with the count: an operator sees when it began, when it ended and how much it touched.
"""

from __future__ import annotations

import logging


class OutageLog:
    def __init__(self, log: logging.Logger, failing: str, back: str, counted_as: str) -> None:
        """`failing`: the warning at the first failure; `back`: the line at the first success
        after it, with the failures' count under the field `counted_as`."""
        self.log = log
        self.failing = failing
        self.back = back
        self.counted_as = counted_as
        self.failures = 0  # since it was last reached

    def failed(self, fields: dict[str, object]) -> None:
        """One more failure; the first of an outage is logged with `fields`."""
        if not self.failures:
            self.log.warning(self.failing, extra={"fields": fields})
        self.failures += 1

    def reached(self, fields: dict[str, object] | None = None) -> bool:
        """It answered: True (and the outage's end logged, with `fields`) if it had failed."""
        if not self.failures:
            return False
        counted = {self.counted_as: self.failures, **(fields or {})}
        self.log.info(self.back, extra={"fields": counted})
        self.failures = 0
        return True
