"""Admission on the request path: reserve before proxying (gateway/metering settles after)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.limits.estimate import output_field_of, reserved_tokens
from gateway.limits.failures import Failure, classify
from gateway.limits.limiter import Admission, AdmissionCancelled, Limiter, TooLarge, new_lease
from gateway.limits.local_inflight import Held, LocalInflight
from gateway.limits.patience import BUSY_FACTOR, Patience
from gateway.limits.prefetch import Prefetch
from gateway.limits.releases import Releases
from gateway.limits.renewals import Renewals
from gateway.limits.tight import tight
from gateway.metrics import Metrics
from gateway.outage_log import OutageLog
from gateway.redis_client import REDIS_FAILURES, redis_error
from gateway.settings import LimitsSettings

_NONE = Limits()
# How long a tight limit's refusal waits before it is asked once more: a settlement another
# replica gives back lingers 2 ms (settler.SLOT_LINGER_S) and takes a round trip to Redis.
SETTLING_S = 0.025
DEFAULTED_MAX = 10_000  # API-key principals whose limits with defaults are remembered


def _may_be_given_back(
    caller: Principal, answer: Admission | RateLimited | AdmissionCancelled, tokens: int
) -> bool:
    """A refusal by a tight limit (limits/tight.py) for tokens or a slot, which a settlement
    lingering in another replica may be giving back: asked once more, SETTLING_S later."""
    if not isinstance(answer, RateLimited) or answer.limit_kind == "requests":
        return False
    if answer.headers.get("x-should-retry") == "false":  # larger than the limit: no wait helps
        return False
    return tight(caller, tokens)


class AdmissionControl:
    def __init__(
        self,
        limiter: Limiter | None,
        settings: LimitsSettings,
        metrics: Metrics,
        *,
        redis_back: list[Callable[[], None]] | None = None,
    ) -> None:
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self.timeout_s = settings.timeout_s
        self.key_defaults = Limits(**settings.key_defaults.model_dump())
        self.tenant_defaults = Limits(**settings.tenant_defaults.model_dump())
        horizon_s = max(settings.lease_ttl_s, settings.window_s)  # then nothing is left to undo
        self.releases = None if limiter is None else Releases(limiter, metrics, horizon_s)
        # Concurrency leases of requests in flight, renewed every ttl/3 until they are settled.
        self.renewals = None if limiter is None else Renewals(limiter, settings.lease_ttl_s / 3)
        # A fetched admission waits unrenewed, and its rpm entry bears the time it was fetched.
        ttl_s = min(settings.prefetch_ttl_s, settings.lease_ttl_s / 3, settings.window_s / 20)
        self.prefetch = (
            None
            if self.releases is None or settings.prefetch_max == 0
            else Prefetch(self.releases, metrics, settings.prefetch_max, ttl_s)
        )
        self.local = LocalInflight(metrics)  # requests in flight here, by limited scope
        # id of an API key's principal -> (it, it with defaults): the authenticator hands a key's
        # requests the same principal while its records are cached, so this is made once.
        self.defaulted: dict[int, tuple[Principal, Principal]] = {}
        self.filling: set[asyncio.Task[None]] = set()  # shelves' fills asked for ahead
        self.log = logging.getLogger("llmaas.limits")
        self.outage = OutageLog(  # (a line per request was thousands a second)
            self.log,
            "rate limiter unavailable (logged again once it answers)",
            "rate limiter reachable again",
            "answered_without_it",
        )
        # Told when an admission reaches Redis after it was away (the settler's retries).
        self.redis_back = redis_back or []

    def hold(self, caller: Principal) -> Held | None:
        """Count a request of `caller` in this process until its `release`, from before its
        body is read; a 429 past its key's or tenant's max_concurrency (local_inflight.py)."""
        return self.local.hold(self.with_defaults(caller))

    def with_defaults(self, caller: Principal) -> Principal:
        """The caller's limits, with configured defaults where its records set none."""
        known = self.defaulted.get(id(caller))
        if known is not None and known[0] is caller:  # held here, so its id is not reused
            return known[1]
        defaulted = self._defaulted(caller)
        if caller.source == "api_key":  # a JWT's principal is made anew for every request
            if len(self.defaulted) >= DEFAULTED_MAX:
                self.defaulted.clear()
            self.defaulted[id(caller)] = (caller, defaulted)
        return defaulted

    def _defaulted(self, caller: Principal) -> Principal:
        key = _merge(caller.key_limits, self.key_defaults)
        tenant = _merge(caller.tenant_limits, self.tenant_defaults)
        if key == caller.key_limits and tenant == caller.tenant_limits:
            return caller
        return dataclasses.replace(caller, key_limits=key, tenant_limits=tenant)

    async def admit(
        self,
        caller: Principal,
        body: dict[str, Any],
        context_length: int | None = None,
        *,
        tokens: int | None = None,
        output_field: str | None = None,
    ) -> Admission | None:
        """None when nothing limits this caller (no Redis round trip) or when failing open.

        A late reply or a busy pool is waited for, up to `timeout_s` not counting the time
        this process was too busy to read it (sending the same lease again charges once); an
        unreachable Redis decides at once. An admission given up on is released in the
        background, so its client is charged nothing. `tokens`: what to reserve, when the
        caller knows better than the chat / completions estimate; `output_field` then names
        the field of output tokens a refusal of a request too large tells the client to lower
        (None: the route generates nothing). Without `tokens`, that is the field the body's
        reservation came from (a "Lower max_tokens" to a client that sent only
        max_completion_tokens, or min_tokens, named a field it never sent).
        """
        if self.limiter is None or (caller.key_limits == _NONE and caller.tenant_limits == _NONE):
            return None
        if tokens is None:
            default = self.settings.default_max_tokens
            tokens = reserved_tokens(body, default, context_length)
            output_field = output_field_of(body, default)
        prefetch = self.prefetch
        if prefetch is not None:
            taken = prefetch.take(caller, tokens)
            if taken is None:
                taken = await self._take_coming(caller, prefetch, tokens)
            if taken is not None:
                self._hold(caller, taken)
                self._refill(caller, prefetch)
                return taken
        wanted, each = (0, tokens) if prefetch is None else prefetch.wanted(caller, tokens)
        requests = [(tokens, new_lease())] + [(each, new_lease()) for _ in range(wanted)]
        try:
            answers = await self._ask_settled(caller, requests)
        finally:
            if prefetch is not None:
                prefetch.arrived(caller, wanted)
        if answers is None:
            return None
        answer = answers[0]
        if not isinstance(answer, Admission):
            self._not_admitted(caller, answer, answers[1:], output_field)
            return None
        if prefetch is not None:
            more = [fetched for fetched in answers[1:] if isinstance(fetched, Admission)]
            prefetch.fetched(caller, [answer, *more])
        self._hold(caller, answer)
        return answer

    async def _ask_settled(
        self, caller: Principal, requests: list[tuple[int, str]]
    ) -> list[Admission | RateLimited | AdmissionCancelled] | None:
        """`_ask`; a tight limit's refusal of the first request, which another replica may be
        giving back (`_may_be_given_back`), is asked once more SETTLING_S later, alone."""
        answers = await self._ask(caller, requests)
        tokens = requests[0][0]
        if answers is None or not _may_be_given_back(caller, answers[0], tokens):
            return answers
        self._give_back(caller, [a.lease for a in answers[1:] if isinstance(a, Admission)])
        await asyncio.sleep(SETTLING_S)
        return await self._ask(caller, [(tokens, new_lease())])

    async def _take_coming(
        self, caller: Principal, prefetch: Prefetch, tokens: int
    ) -> Admission | None:
        """The shelf has none for this request: one from the call on its way with more for
        it, if that brings one for this request (sent earlier, it is answered sooner than a
        call of this request's own). Waited for up to `timeout_s`; None: ask Redis."""
        arrival = prefetch.awaited(caller, tokens)
        if arrival is None:
            return None
        try:
            await asyncio.wait((arrival,), timeout=self.timeout_s)
        except asyncio.CancelledError:  # its client left
            if not arrival.cancel() and (handed := arrival.result()) is not None:
                self._give_back(caller, [handed.lease])  # (cancel: nothing will be handed)
            raise
        if arrival.cancel():  # not answered within timeout_s: nothing will be handed
            return None
        return arrival.result()

    def _refill(self, caller: Principal, prefetch: Prefetch) -> None:
        """Ask for the shelf's next fill in the background if a take left it half empty."""
        count, each = prefetch.ahead(caller)
        if count:
            fill = asyncio.create_task(self._fill(caller, prefetch, count, each))
            self.filling.add(fill)
            fill.add_done_callback(self.filling.discard)

    async def _fill(self, caller: Principal, prefetch: Prefetch, count: int, each: int) -> None:
        """Fetch `count` admissions of `each` tokens for the shelf; a fill that fails or is
        refused in part gives back whatever it may have charged and is not retried (the key's
        next request that finds the shelf empty asks on its own path, as without a shelf)."""
        assert self.limiter is not None
        leases = [new_lease() for _ in range(count)]
        try:
            async with Patience(self.timeout_s, self.timeout_s * BUSY_FACTOR):
                answers = await self.limiter.admit_all(caller, [(each, lease) for lease in leases])
        except REDIS_FAILURES:
            self._give_back(caller, leases)  # releasing one that never ran cancels it
            return
        except asyncio.CancelledError:  # closing
            self._give_back(caller, leases)
            raise
        finally:
            prefetch.arrived(caller, count)
        admitted: list[Admission] = []
        for answer in answers:
            if not isinstance(answer, Admission):
                break
            admitted.append(answer)
        prefetch.fetched_ahead(caller, admitted)
        if len(admitted) < len(answers):  # near a limit: none fetched until a reply shows room
            prefetch.refused(caller)
            refused = answers[len(admitted) :]  # those after a refusal are refused too
            self._give_back(caller, [a.lease for a in refused if isinstance(a, Admission)])

    def _not_admitted(
        self,
        caller: Principal,
        answer: RateLimited | AdmissionCancelled,
        fetched: list[Admission | RateLimited | AdmissionCancelled],
        output_field: str | None,
    ) -> None:
        """Raises the refusal, or returns to admit without limits as failure_mode says."""
        # Those fetched after a refusal are refused too; any that was not goes back.
        self._give_back(caller, [more.lease for more in fetched if isinstance(more, Admission)])
        if isinstance(answer, AdmissionCancelled):
            # Its lease was released before the script ran (only a give-up releases one, so
            # not expected within one admission): it charged nothing; failure_mode decides.
            self._unavailable(Failure("error", may_have_run=False), answer)
            return
        if self.prefetch is not None:
            self.prefetch.refused(caller)
        self.metrics.ratelimit_rejections.labels(
            caller.tenant, answer.scope, answer.limit_kind
        ).inc()
        raise answer.naming(output_field) if isinstance(answer, TooLarge) else answer

    async def _ask(
        self, caller: Principal, requests: list[tuple[int, str]]
    ) -> list[Admission | RateLimited | AdmissionCancelled] | None:
        """Redis's answers to (tokens, lease) in order, or None where failure_mode admits."""
        assert self.limiter is not None
        sent = False
        try:
            async with Patience(self.timeout_s, self.timeout_s * BUSY_FACTOR):
                while True:
                    try:
                        answers = await self.limiter.admit_all(caller, requests)
                    except REDIS_FAILURES as exc:
                        failure = classify(exc)
                        sent = sent or failure.may_have_run
                        if not failure.waits:
                            raise
                    else:
                        self._reached()
                        return answers
        except REDIS_FAILURES as exc:
            failure = classify(exc)  # TimeoutError from the deadline: slow, maybe sent
            if sent or failure.may_have_run:
                self._give_back(caller, [lease for _, lease in requests])
            self._unavailable(failure, exc)
            return None
        except asyncio.CancelledError:  # its client left: what the call may have charged goes back
            self._give_back(caller, [lease for _, lease in requests])
            raise

    def _give_back(self, caller: Principal, leases: list[str]) -> None:
        """Release these leases in the background: whatever they charged is returned."""
        if self.releases is not None:
            for lease in leases:
                self.releases.add(caller, lease)

    def _hold(self, caller: Principal, admission: Admission) -> None:
        """A concurrency lease is renewed while its request is in flight (see renewals.py)."""
        limited = caller.key_limits.max_concurrency or caller.tenant_limits.max_concurrency
        if limited and self.renewals is not None:
            self.renewals.hold(caller, admission.lease)

    def give_back(self, caller: Principal, admission: Admission) -> None:
        """A request admitted, then refused before any engine took it (shed): its admission is
        released as one given up on (its rpm entry, tokens and slot), not settled."""
        self.done(admission)
        self._give_back(caller, [admission.lease])

    def done(self, admission: Admission) -> None:
        """The request is settled: its lease is no longer renewed."""
        if self.renewals is not None:
            self.renewals.drop(admission.lease)

    def _unavailable(self, failure: Failure, exc: BaseException) -> None:
        """failure_mode's answer: returns to admit without limits (open), else raises 503."""
        self.metrics.ratelimit_unavailable.labels(self.settings.failure_mode).inc()
        self.outage.failed(
            {
                "reason": failure.kind,
                "error": redis_error(exc),
                "failure_mode": self.settings.failure_mode,
            }
        )
        if self.settings.failure_mode == "closed":
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now; try again shortly.",
                code="rate_limiter_unavailable",
                headers={"retry-after": "1"},
            ) from exc

    def _reached(self) -> None:
        if self.renewals is not None and self.renewals.outage.failures:
            self.renewals.redis_back()  # (its own outage: no admission may have failed)
        if self.outage.reached():
            if self.releases is not None:
                self.releases.redis_back()
            for told in self.redis_back:
                told()

    async def close(self) -> list[tuple[Principal, str]]:
        """Let admissions given up on or not used be released (briefly), then stop trying; the
        leases Redis did not take by then (the caller settles them another way)."""
        for fill in self.filling:
            fill.cancel()  # gives back what it may have charged
        await asyncio.gather(*self.filling, return_exceptions=True)
        if self.prefetch is not None:
            self.prefetch.close()
        if self.renewals is not None:
            await self.renewals.close()
        if self.releases is not None:
            return await self.releases.close()
        return []


def _merge(own: Limits, defaults: Limits) -> Limits:
    return Limits(
        own.rpm if own.rpm is not None else defaults.rpm,
        own.tpm if own.tpm is not None else defaults.tpm,
        own.max_concurrency if own.max_concurrency is not None else defaults.max_concurrency,
    )
