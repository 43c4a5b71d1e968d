"""Cutting a request short: the task that serves it is cancelled when its client leaves or
stops reading, or when a drain's grace is over (the gateway then ends its answer: a 503, or
a stream's error frame and `[DONE]`), once, and the cancellation is told apart from anyone
else's (uvicorn's, when even that end did not come in time).

The request's own task does the work, told of a disconnect by its connection (departure.py): no
second task for the work and no `asyncio.wait` over the two, which every request used to pay.
"""

from __future__ import annotations

import asyncio

from gateway.errors import ServiceUnavailable
from gateway.proxy.outcome import CLIENT_GONE, Outcome


class Cut:
    __slots__ = ("closed", "outcome", "taken", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.outcome: Outcome | None = None  # why it was cut; None while it was not
        self.closed = False  # the work is over: nothing is cut any more
        self.taken = False  # its cancellation was taken back (uncancel)

    def client_left(self) -> None:
        """The client went away (departure.Departure)."""
        self._cut(Outcome.CLIENT_DISCONNECTED)

    def cancel(self) -> bool:
        """What the write deadline calls (asgi_send.WriteDeadline): the client stopped reading.
        True if this cut the request (it was not cut already)."""
        return self._cut(Outcome.SLOW_CLIENT)

    def shutdown(self) -> None:
        """The drain's grace is over (draining_server.py): the request ends now, answered."""
        self._cut(Outcome.GATEWAY_SHUTDOWN)

    def shutting_down(self) -> bool:
        """After a CancelledError reached the work: True if it was this cut's, for the end of
        a drain, alone (taken back: the work ends its answer)."""
        return self.outcome is Outcome.GATEWAY_SHUTDOWN and self.take_back()

    def client_gone(self) -> bool:
        """After a CancelledError reached the work: True if it was this cut's, for a client
        that left or stopped reading, alone (taken back: the work decides how it ended)."""
        return self.outcome in CLIENT_GONE and self.take_back()

    def _cut(self, outcome: Outcome) -> bool:
        if self.closed or self.outcome is not None:
            return False
        self.outcome = outcome
        self.task.cancel()
        return True

    def take_back(self) -> bool:
        """After a CancelledError reached the work: True if it was this cut's alone (taken
        back: the request ends as `outcome` says); False if someone else cancelled the task
        too, or instead (then it must go on up)."""
        if self.outcome is None or self.taken:
            return False
        self.taken = True
        return self.task.uncancel() == 0

    def close(self) -> None:
        """The work is over: no cut from now on (a cut whose CancelledError the work swallowed
        is taken back, so that the task is not left cancelling)."""
        self.closed = True
        if self.outcome is not None and not self.taken:
            self.taken = True
            self.task.uncancel()


def shutdown_error() -> ServiceUnavailable:
    """What a request cut at the end of a drain's grace is told (its stream, in a frame)."""
    return ServiceUnavailable(
        "This gateway shut down before the answer was complete; retry shortly.",
        code="gateway_shutdown",
        headers={"retry-after": "1", "connection": "close"},
    )
