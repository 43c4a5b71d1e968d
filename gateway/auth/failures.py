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
        # Per client, the credentials being checked now (each with how many requests carry
        # it): 401s are known only once answered, so a burst of bad keys sent at once passed
        # the limit whole, each one read from Redis.
        self.checking: dict[str, dict[bytes, int]] = {}

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

    def begin(self, client: str, credential: bytes) -> bool:
        """A request of `client`'s carrying `credential` starts; False (nothing noted) when the
        client already has as many other credentials being checked as its failures leave room
        for: at most `limit` distinct credentials of one client fail together. The same
        credential sent many times at once counts once. `end` follows a True."""
        checking = self.checking.get(client)
        if checking is None:
            self.checking[client] = {credential: 1}
            return True
        count = checking.get(credential)
        if count is not None:
            checking[credential] = count + 1
            return True
        if len(checking) + self._recent(client) >= self.limit:
            return False
        checking[credential] = 1
        return True

    def end(self, client: str, credential: bytes) -> None:
        checking = self.checking[client]
        count = checking[credential] - 1
        if count:
            checking[credential] = count
        elif len(checking) > 1:
            del checking[credential]
        else:
            del self.checking[client]

    def _recent(self, client: str) -> int:
        recent = self.failures.get(client)
        if recent is None:
            return 0
        since = self.clock() - self.window_s
        return sum(1 for at in recent if at > since)
