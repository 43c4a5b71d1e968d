"""Accounting: the proxy's neutral result becomes the usage record and the limits' settlement.

The API layer knows who asked and what was reserved (a `Charge`); the proxy knows what
happened (a `ProxyResult`). Here the two meet, once per request, and go to the settler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.limits.limiter import Admission
from gateway.limits.tight import tight
from gateway.metering.record import UsageRecord, new_record_id
from gateway.metering.settlement import LimitSettlement, Settlement
from gateway.metering.settler import Settler
from gateway.metering.usage import Usage
from gateway.proxy.outcome import CLIENT_GONE, Outcome, ProxyResult, Reporter

_REFUNDED = (Outcome.ENGINE_ERROR, Outcome.REJECTED, Outcome.TIMEOUT, Outcome.GATEWAY_SHUTDOWN)


@dataclass(frozen=True, slots=True)
class Charge:
    """What the API layer knows of a request before it is proxied."""

    request_id: str
    route: str  # "chat/completions", as under /v1/
    model: str
    stream: bool
    caller: Principal
    admission: Admission | None  # charged limits, settled when the answer is done
    received_ms: int  # when the request arrived, Unix ms (the record's time)
    # Each prompt's tokens as estimated from the body (estimate.prompt_estimates), asked only of
    # a request its client left before the engine reported usage for every prompt (vLLM reports
    # a prompt with its first token, though it was read before): else hanging up just before
    # the first token made prefill free, and a batch's long prompt behind a short one too.
    prompt_estimates: Callable[[], list[int]] | None = None


def settlement_of(charge: Charge, result: ProxyResult) -> Settlement | None:
    """The usage record (if an engine was reached) and the limits to reconcile (if any)."""
    admission = charge.admission
    if result.engine is None and admission is None:
        return None
    usage = billed(charge, result)
    record_id = new_record_id()
    record = None if result.engine is None else _record(record_id, charge, result, usage)
    limits = None
    if admission is not None:
        limits = LimitSettlement(
            lease=admission.lease,
            delta=used_tokens(result, usage, admission) - admission.reserved_tokens,
            key_tpm=charge.caller.key_limits.tpm or 0,
            tenant_tpm=charge.caller.tenant_limits.tpm or 0,
            key_until_ms=admission.charged_until[0],
            tenant_until_ms=admission.charged_until[1],
        )
    return Settlement(record_id, charge.caller.tenant, charge.caller.scope_id, record, limits)


def billed(charge: Charge, result: ProxyResult) -> Usage:
    """What the request is billed: the engine's report, and if its client left before the
    engine reported every prompt, the estimate of each prompt not reported (only the client's
    leaving: a request the engine or the gateway cut pays no more than was reported)."""
    usage = result.usage
    if usage is not None and usage.prompts is None:
        return usage
    if result.engine is None or result.outcome not in CLIENT_GONE:
        return usage or Usage()
    estimates = [] if charge.prompt_estimates is None else charge.prompt_estimates()
    if usage is None:
        return Usage(sum(estimates))
    reported = set(usage.prompts or ())
    unreported = sum(tokens for i, tokens in enumerate(estimates) if i not in reported)
    return dataclasses.replace(usage, prompt_tokens=usage.prompt_tokens + unreported)


def used_tokens(result: ProxyResult, usage: Usage, admission: Admission) -> int:
    """What to charge the token limits: what is billed if the engine reported; nothing if no
    engine answered or it refused; else (cut short before any report) the reservation."""
    if result.usage is not None:
        return usage.total_tokens
    if result.engine is None or result.outcome in _REFUNDED:
        return 0
    return admission.reserved_tokens


def _record(record_id: str, charge: Charge, result: ProxyResult, usage: Usage) -> UsageRecord:
    return UsageRecord(
        id=record_id,
        request_id=charge.request_id,
        time_ms=charge.received_ms,
        tenant=charge.caller.tenant,
        key_id=charge.caller.key_id,
        model=charge.model,
        route=charge.route,
        engine=result.engine or "",
        stream=charge.stream,
        outcome=str(result.outcome),
        status=result.status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        latency_ms=round(result.latency_s * 1000, 3),
        ttft_ms=None if result.ttft_ms is None else round(result.ttft_ms, 3),
    )


def _nothing(admission: Admission) -> None:
    pass


def _kept(caller: Principal, admission: Admission) -> None:
    pass


class Accounting:
    def __init__(
        self,
        settler: Settler,
        done: Callable[[Admission], None] = _nothing,
        give_back: Callable[[Principal, Admission], None] = _kept,
    ) -> None:
        """`done`: told that an admission is being settled (its lease need not be renewed
        any longer: AdmissionControl.done). `give_back`: releases the admission of a request
        shed before any engine took it (AdmissionControl.give_back), which no rate limit
        counts."""
        self.settler = settler
        self.done = done
        self.give_back = give_back

    def reporter(self, charge: Charge) -> Reporter:
        """What the proxy calls with its result: settle it (never raises)."""
        frees_slot = charge.admission is not None and tight(
            charge.caller, charge.admission.reserved_tokens
        )

        async def report(result: ProxyResult) -> None:
            if charge.admission is not None and result.outcome is Outcome.SHED:
                self.give_back(charge.caller, charge.admission)
                return  # (no engine: no record either)
            if charge.admission is not None:
                self.done(charge.admission)
            settlement = settlement_of(charge, result)
            if settlement is not None:  # not waited for: see Settler.submit
                self.settler.submit(settlement, frees_slot=frees_slot)

        return report
