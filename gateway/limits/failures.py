"""What a failed call to Redis means for an admission: wait longer, or decide now.

A busy gateway and a slow Redis look alike from inside one request (the reply is late either
way), so both are waited for, up to `limits.timeout_s`. A Redis that cannot be reached, or that
answers with an error, is an outage: failure_mode decides at once. Independently, a call that
may have reached Redis may have been admitted there, so its lease must be released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# busy: no free connection in the pool in time (nothing was sent);
# slow: sent or connecting, no reply in time (the machine's queueing counts too);
# unreachable: connection refused, reset or closed; error: Redis answered with an error.
Kind = Literal["busy", "slow", "unreachable", "error"]
# Error replies (redis-py files a few under ConnectionError: loading, auth).
_ANSWERED = (ResponseError, BusyLoadingError, AuthenticationError, AuthorizationError)


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    may_have_run: bool  # the script may have reached Redis: its lease must be released

    @property
    def waits(self) -> bool:
        """Worth trying again (the same lease charges once) while the admission has time."""
        return self.kind in ("busy", "slow")


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, TimeoutError):
        return Failure("busy", may_have_run=False)  # BlockingConnectionPool's "No connection"
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return Failure("slow", may_have_run=True)
    if isinstance(exc, _ANSWERED):
        return Failure("error", may_have_run=False)  # an error reply: the script did not run
    if _refused(exc):
        return Failure("unreachable", may_have_run=False)  # nothing listens: nothing ran
    return Failure("unreachable", may_have_run=True)  # reset or closed after sending, maybe


def _refused(exc: BaseException) -> bool:
    """Connection refused: redis-py raises it as its ConnectionError in the OSError's place."""
    return isinstance(exc, ConnectionRefusedError) or isinstance(
        exc.__context__, ConnectionRefusedError
    )
