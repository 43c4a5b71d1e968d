"""Admissions fetched ahead for a busy key: most of its requests skip the round trip to Redis.

A request that asks Redis for its admission asks, in the same admission.lua call, for a few
more of its key and limits: for the requests that will follow it in this process. They are
decided after it, each as a request of its own would be (one refused charges nothing), and
charged then: the request logs hold their entries, the token buckets their tokens, the lease
sets their slots. The key's next requests take one each, with no round trip, if its reserved
tokens cover theirs (each reserves the most any of the key's requests reserved since the last
fill; settlement refunds the difference, as for any reservation); what is not taken within
`ttl_s` is released (release.lua gives it all back). So every request still has its own
admission charged in Redis before it runs: no replica ever admits what Redis did not count, and
limits hold across replicas as before.

What fetching ahead changes, and why it is bounded:

- A fetched admission waiting in one replica counts against the limits everywhere, so another
  replica may be refused a little early. A key is fetched for only while far from its limits:
  at most 1/HEADROOM of what the last reply said remains (requests, tokens) and of its
  concurrency limits. Near a limit every request asks Redis, exactly as without fetching.
- A request's entry in the rpm log bears the time it was charged, up to `ttl_s` before it ran.
- x-ratelimit-remaining-* count the fetched admissions as used (the headers a fetched
  admission carries are the figures Redis answered for it).

How many: one at first, then twice as many each time the key ran out before the last ones
expired, up to `max_count`. A key that lets them expire (it slowed down, or stopped) starts
over: what was left is released and what was learnt about the key is forgotten.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from gateway.auth.principal import Limits, Principal
from gateway.limits.limiter import Admission
from gateway.limits.releases import Releases
from gateway.metrics import Metrics

HEADROOM = 20  # fetch at most 1/HEADROOM of what remains of a limit

_Name = tuple[str, str, Limits, Limits]


@dataclass(slots=True)
class _Shelf:
    caller: Principal
    size: int = 1  # how many the next fill asks for
    last: Admission | None = None  # Redis's last answer: the room it leaves (none: none)
    coming: int = 0  # asked for in calls not answered yet
    largest: int = 0  # the most tokens a request of the key reserved since the last fill
    ready: deque[Admission] = field(default_factory=deque)
    expiry: asyncio.TimerHandle | None = None


def _name(caller: Principal) -> _Name:
    return (caller.tenant, caller.key_id, caller.key_limits, caller.tenant_limits)


class Prefetch:
    def __init__(self, releases: Releases, metrics: Metrics, max_count: int, ttl_s: float) -> None:
        self.releases = releases
        self.max_count = max_count
        self.ttl_s = ttl_s
        self.shelves: dict[_Name, _Shelf] = {}
        self.used = metrics.ratelimit_prefetched.labels("used")
        self.expired = metrics.ratelimit_prefetched.labels("expired")

    def take(self, caller: Principal, tokens: int) -> Admission | None:
        """A fetched admission of the caller's key and limits covering `tokens`, if any."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None:
            return None
        shelf.largest = max(shelf.largest, tokens)
        if not shelf.ready or shelf.ready[0].reserved_tokens < tokens:
            return None
        self.used.inc()
        return shelf.ready.popleft()

    def wanted(self, caller: Principal, tokens: int) -> tuple[int, int]:
        """How many to fetch with the caller's admission (reserving `tokens`), and the tokens
        each reserves: the most any of the key's requests reserved since the last fill, so
        that requests of every size take them. None while some are left (one that asks Redis
        needs more tokens than they hold) or on their way, or before a reply has shown room.
        Each is asked for once: `arrived` must follow, `fetched` on success."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None or shelf.ready or shelf.coming:
            return 0, tokens
        if shelf.expiry is not None:  # ran out before they expired: twice as many
            shelf.size = min(shelf.size * 2, self.max_count)
            shelf.expiry.cancel()
            shelf.expiry = None
        each = max(tokens, shelf.largest)
        shelf.coming = min(shelf.size, _room(caller, each, shelf.last))
        shelf.largest = 0
        return shelf.coming, each

    def arrived(self, caller: Principal, asked: int) -> None:
        """The call that asked for `asked` was answered, or failed."""
        shelf = self.shelves.get(_name(caller))
        if shelf is not None and asked:
            shelf.coming = max(0, shelf.coming - asked)

    def fetched(self, caller: Principal, answers: list[Admission]) -> None:
        """Redis admitted the caller (`answers[0]`) and what was fetched with it (the rest),
        in order: shelve the rest, keep the last answer (the room it leaves)."""
        name = _name(caller)
        shelf = self.shelves.get(name)
        if shelf is None:
            shelf = self.shelves[name] = _Shelf(caller)
        shelf.last = answers[-1]
        if len(answers) > 1:
            shelf.ready.extend(answers[1:])
            if shelf.expiry is None:
                loop = asyncio.get_running_loop()
                shelf.expiry = loop.call_later(self.ttl_s, self._expire, name)

    def refused(self, caller: Principal) -> None:
        """The caller's key met a limit: fetch nothing until a reply shows room again."""
        shelf = self.shelves.get(_name(caller))
        if shelf is not None:
            shelf.last = None

    def _expire(self, name: _Name) -> None:
        shelf = self.shelves.pop(name, None)
        if shelf is not None:
            self._release(shelf)

    def _release(self, shelf: _Shelf) -> None:
        for admission in shelf.ready:
            self.releases.add(shelf.caller, admission.lease)
        self.expired.inc(len(shelf.ready))
        shelf.ready.clear()

    def close(self) -> None:
        """Give back every admission not taken (Releases sends them)."""
        for shelf in self.shelves.values():
            if shelf.expiry is not None:
                shelf.expiry.cancel()
                shelf.expiry = None
            self._release(shelf)
        self.shelves.clear()


def _room(caller: Principal, tokens: int, last: Admission | None) -> int:
    """How many more admissions of `tokens` the answer `last` leaves room to fetch (see
    HEADROOM)."""
    if last is None:
        return 0
    room = 1 << 30
    keys, tenants = caller.key_limits, caller.tenant_limits
    for limited, figures, cost in (
        (keys.rpm or tenants.rpm, last.requests, 1),
        (keys.tpm or tenants.tpm, last.tokens, max(1, tokens)),
    ):
        if limited:
            remaining = figures[1] if figures is not None else 0  # none: an answer seen before
            room = min(room, remaining // (HEADROOM * cost))
    for concurrency in (keys.max_concurrency, tenants.max_concurrency):
        if concurrency:
            room = min(room, concurrency // HEADROOM)
    return max(0, room)
