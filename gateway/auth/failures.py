"""Per-client memory of recent 401s: a client that keeps failing is turned away for a while.

Per process and in memory (no Redis call, so a flood of bad keys costs Redis nothing); at most
`max_clients` clients are remembered, least recently failing forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureThrottle:
    def __init__(
        self,
        limit: int,
        window_s: float,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.failures)

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        recent = self.failures.get(client)
        if recent is None or len(recent) < self.limit:
            return None
        wait = recent[0] + self.window_s - self.clock()
        return wait if wait > 0 else None

    def failed(self, client: str) -> None:
        recent = self.failures.pop(client, None) or deque(maxlen=self.limit)
        recent.append(self.clock())
        self.failures[client] = recent  # now the most recent
        while len(self.failures) > self.max_clients:
            self.failures.popitem(last=False)
