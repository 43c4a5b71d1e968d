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
  at most 1/HEADROOM of what the last reply said remains (requests, tokens, concurrency
  slots). Near a limit every request asks Redis, exactly as without fetching.
- A request's entry in the rpm log bears the time it was charged, up to `ttl_s` before it ran.
- x-ratelimit-remaining-* count the fetched admissions as used (the headers a fetched
  admission carries are the figures Redis answered for it).

How many: one at first, then twice as many each time the key ran out before the last ones
expired, or half used them up within a quarter of `ttl_s` of their arrival, up to `max_count`.
A key that lets one expire (it slowed down, or stopped) starts over: what was left is released
and what was learnt about the key is forgotten.

Refilled before it is empty: the request that takes a shelf down to half its size has the next
fill asked for in the background (`ahead`, AdmissionControl), so at a steady rate the key's
requests find one waiting and none of them waits for Redis; only a key that runs out (a burst,
or its first requests) asks on a request's path. One that finds the shelf empty while a call
bringing more is on its way waits for that call instead (`awaited`), if it brings one for it
(one each, covering its tokens): sent earlier, it is answered sooner than a call of its own
would be, and what it brings is handed to those waiting first, in the order they came, so the
key's admissions go out in the order Redis charged them. What sits on a shelf stays within
1/HEADROOM of what remains of the limits: a fill asks for no more than that, less what is
already there.

A caller (key and limits) gone quiet, with nothing on its shelf, is forgotten when the table
grows (`_sweep`): every JWT subject and every change of a key's limits is a new caller.
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
QUICK = 4  # half a shelf used within ttl_s / QUICK of its fill's arrival: twice as many next
SWEEP_MIN = 1024  # the table is swept of callers gone quiet when it reaches this (or 2x its size)

_Name = tuple[str, str, Limits, Limits]


@dataclass(slots=True)
class _Shelf:
    caller: Principal
    size: int = 1  # how many the next fill asks for
    last: Admission | None = None  # Redis's last answer: the room it leaves (none: none)
    coming: int = 0  # asked for in calls not answered yet
    coming_each: int = 0  # the tokens each of those reserves
    waiting: deque[asyncio.Future[Admission | None]] = field(default_factory=deque)  # for those
    largest: int = 0  # the most tokens a request of the key reserved since the last fill
    ready: deque[Admission] = field(default_factory=deque)
    due: deque[float] = field(default_factory=deque)  # when each of `ready` expires (loop time)
    filled_at: float | None = None  # when the last fill arrived (loop time)
    stocked: bool = False  # a fill arrived since the shelf last ran out
    expiry: asyncio.TimerHandle | None = None  # at the oldest one's due time, or earlier
    answered_at: float = 0.0  # when Redis last answered for the key (loop time)


def _name(caller: Principal) -> _Name:
    return (caller.tenant, caller.scope_id, caller.key_limits, caller.tenant_limits)


class Prefetch:
    def __init__(self, releases: Releases, metrics: Metrics, max_count: int, ttl_s: float) -> None:
        self.releases = releases
        self.max_count = max_count
        self.ttl_s = ttl_s
        self.shelves: dict[_Name, _Shelf] = {}
        self.sweep_at = SWEEP_MIN  # the table's size at which it is next swept
        self.used = metrics.ratelimit_prefetched.labels("used")
        self.expired = metrics.ratelimit_prefetched.labels("expired")

    def take(self, caller: Principal, tokens: int) -> Admission | None:
        """The oldest fetched admission of the caller's key and limits covering `tokens`, if
        any."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None:
            return None
        shelf.largest = max(shelf.largest, tokens)
        if not shelf.ready:
            if shelf.stocked:  # ran out before they expired: twice as many
                shelf.stocked = False
                shelf.size = min(shelf.size * 2, self.max_count)
            if shelf.expiry is not None:
                shelf.expiry.cancel()
                shelf.expiry = None
            return None
        if shelf.due[0] <= _now():  # its timer is late (a busy loop): over ttl_s, not handed out
            if shelf.expiry is not None:
                shelf.expiry.cancel()
                shelf.expiry = None
            del self.shelves[_name(caller)]
            self._release(shelf)
            return None
        ready = shelf.ready
        if ready[0].reserved_tokens >= tokens:  # (the oldest: nearly always)
            shelf.due.popleft()
            taken = ready.popleft()
        else:  # the oldest that covers them: fills reserve what the largest request did
            index = next((i for i, a in enumerate(ready) if a.reserved_tokens >= tokens), None)
            if index is None:
                return None
            taken = ready[index]
            del ready[index]
            del shelf.due[index]
        self.used.inc()
        return taken

    def ahead(self, caller: Principal) -> tuple[int, int]:
        """After a `take`: how many to fetch now, in the background, and the tokens each
        reserves, so that the shelf is refilled before it runs out. (0, 0) while more than half
        of its size is left or a fill is on its way, or when the last reply leaves no room.
        Asked for once: `arrived` must follow, `fetched_ahead` on success."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None or shelf.coming or 2 * len(shelf.ready) > shelf.size:
            return 0, 0
        quick = self.ttl_s / QUICK
        if shelf.filled_at is not None and _now() - shelf.filled_at < quick:
            shelf.size = min(shelf.size * 2, self.max_count)
        each = shelf.largest
        count = min(shelf.size, _room(caller, each, shelf.last) - len(shelf.ready))
        if count <= 0:
            return 0, 0
        shelf.coming, shelf.coming_each = count, each
        shelf.largest = 0
        return count, each

    def wanted(self, caller: Principal, tokens: int) -> tuple[int, int]:
        """How many to fetch with the caller's admission (reserving `tokens`), and the tokens
        each reserves: the most any of the key's requests reserved since the last fill, so
        that requests of every size take them. None while some are left (one that asks Redis
        needs more tokens than they hold) or on their way, or before a reply has shown room.
        Each is asked for once: `arrived` must follow, `fetched` on success."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None or shelf.ready or shelf.coming:
            return 0, tokens
        each = max(tokens, shelf.largest)
        shelf.coming, shelf.coming_each = min(shelf.size, _room(caller, each, shelf.last)), each
        shelf.largest = 0
        return shelf.coming, each

    def awaited(self, caller: Principal, tokens: int) -> asyncio.Future[Admission | None] | None:
        """After a `take` found nothing: if the call on its way with more for the shelf brings
        one for this request (one of those coming that no earlier request waits for, covering
        `tokens`), a future that the call's answer sets to it (None: the call failed, or Redis
        refused it). Cancel the future to give up waiting. None: nothing coming for it, ask
        Redis."""
        shelf = self.shelves.get(_name(caller))
        if shelf is None or len(shelf.waiting) >= shelf.coming or shelf.coming_each < tokens:
            return None
        arrival: asyncio.Future[Admission | None] = asyncio.get_running_loop().create_future()
        shelf.waiting.append(arrival)
        return arrival

    def arrived(self, caller: Principal, asked: int) -> None:
        """The call that asked for `asked` was answered, or failed. Those still waiting for it
        once the caller's step is over (`fetched` follows in that step and hands them what
        came) get None."""
        shelf = self.shelves.get(_name(caller))
        if shelf is not None and asked:
            shelf.coming = max(0, shelf.coming - asked)
            if not shelf.coming and shelf.waiting:
                asyncio.get_running_loop().call_soon(_wake, shelf)

    def fetched(self, caller: Principal, answers: list[Admission]) -> None:
        """Redis admitted the caller (`answers[0]`) and what was fetched with it (the rest),
        in order: shelve the rest, keep the last answer (the room it leaves)."""
        self._shelve(caller, answers[-1], answers[1:])

    def fetched_ahead(self, caller: Principal, answers: list[Admission]) -> None:
        """Redis admitted these, asked for by `ahead`, in order: shelve them all."""
        if answers:
            self._shelve(caller, answers[-1], answers)

    def _shelve(self, caller: Principal, last: Admission, admissions: list[Admission]) -> None:
        name = _name(caller)
        loop = asyncio.get_running_loop()
        shelf = self.shelves.get(name)
        if shelf is None:
            if len(self.shelves) >= self.sweep_at:
                self._sweep(loop.time())
            shelf = self.shelves[name] = _Shelf(caller)
        shelf.answered_at = loop.time()
        shelf.last = last
        shelf.stocked = shelf.stocked or bool(admissions)
        handed = 0  # first to those waiting for them, in turn
        while shelf.waiting and handed < len(admissions):
            arrival = shelf.waiting.popleft()
            if not arrival.done():  # (else its request gave up waiting)
                arrival.set_result(admissions[handed])
                handed += 1
        if handed:
            self.used.inc(handed)
            admissions = admissions[handed:]
        if not admissions:
            return
        shelf.filled_at = now = shelf.answered_at
        shelf.ready.extend(admissions)
        shelf.due.extend([now + self.ttl_s] * len(admissions))
        if shelf.expiry is None:
            shelf.expiry = loop.call_at(shelf.due[0], self._expire, name)

    def _sweep(self, now: float) -> None:
        """Forget the callers gone quiet: nothing on their shelf, nothing coming or awaited,
        and no answer from Redis for ttl_s (one that comes back starts over, as after an
        expiry). Every caller ever admitted kept its entry (each JWT subject, each change of a
        key's limits), so the table grew for good. Swept again at twice the size it is left
        with: a constant share of the work of adding to it."""
        quiet = now - self.ttl_s
        for name in [
            name
            for name, shelf in self.shelves.items()
            if shelf.answered_at < quiet
            and not (shelf.ready or shelf.coming or shelf.waiting or shelf.expiry)
        ]:
            del self.shelves[name]
        self.sweep_at = max(SWEEP_MIN, 2 * len(self.shelves))

    def refused(self, caller: Principal) -> None:
        """The caller's key met a limit: fetch nothing until a reply shows room again."""
        shelf = self.shelves.get(_name(caller))
        if shelf is not None:
            shelf.last = None

    def _expire(self, name: _Name) -> None:
        """The oldest admission of a shelf is due (or the one it was set for was taken, and
        the next is not due yet: wait for that one). One not taken in time: the key slowed
        down or stopped, and starts over."""
        shelf = self.shelves.get(name)
        if shelf is None:
            return
        shelf.expiry = None
        loop = asyncio.get_running_loop()
        if shelf.due and shelf.due[0] > loop.time():
            shelf.expiry = loop.call_at(shelf.due[0], self._expire, name)
            return
        del self.shelves[name]
        self._release(shelf)

    def _release(self, shelf: _Shelf) -> None:
        _wake(shelf)  # (none expected: a shelf expires only with admissions on it)
        for admission in shelf.ready:
            self.releases.add(shelf.caller, admission.lease)
        self.expired.inc(len(shelf.ready))
        shelf.ready.clear()
        shelf.due.clear()

    def close(self) -> None:
        """Give back every admission not taken (Releases sends them)."""
        for shelf in self.shelves.values():
            if shelf.expiry is not None:
                shelf.expiry.cancel()
                shelf.expiry = None
            self._release(shelf)
        self.shelves.clear()


def _wake(shelf: _Shelf) -> None:
    """Nothing more is coming for those still waiting: they ask Redis."""
    for arrival in shelf.waiting:
        if not arrival.done():
            arrival.set_result(None)
    shelf.waiting.clear()


def _now() -> float:
    return asyncio.get_running_loop().time()


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
    if keys.max_concurrency or tenants.max_concurrency:
        # What is free, not the limit: each admission fetched holds a slot, so near the limit
        # (the tenant's slots taken by its other keys' requests and shelves too) none is fetched.
        free = last.slots_free if last.slots_free is not None else 0
        room = min(room, free // HEADROOM)
    return max(0, room)
