"""Accounting: a proxy result and what the API layer knew become the record and the settlement."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.auth.principal import Limits, Principal
from gateway.limits.limiter import Admission
from gateway.limits.tight import TIGHT_CONCURRENCY, TIGHT_TOKEN_SHARE
from gateway.metering.accounting import Accounting, Charge, settlement_of
from gateway.metering.settlement import Settlement
from gateway.metering.settler import Settler
from gateway.metering.usage import Usage
from gateway.metrics import Metrics
from gateway.proxy.outcome import Outcome, ProxyResult
from gateway.settings import MeteringSettings

CALLER = Principal(
    tenant="acme",
    key_id="k1",
    source="api_key",
    key_limits=Limits(tpm=1000),
    tenant_limits=Limits(tpm=5000),
)
ADMISSION = Admission(lease="lease-1", reserved_tokens=300, requests=None, tokens=None)
CHARGE = Charge("rid", "chat/completions", "m", False, CALLER, ADMISSION, received_ms=1_000)
OK = ProxyResult("http://e", 200, Outcome.OK, Usage(10, 20, 4), ttft_ms=12.5, latency_s=0.25)


def test_a_finished_request_is_one_record_and_settles_the_reservation_to_its_usage() -> None:
    settlement = settlement_of(CHARGE, OK)
    assert settlement is not None
    record = settlement.record
    assert record is not None
    assert (record.tenant, record.key_id, record.model, record.route) == (
        "acme",
        "k1",
        "m",
        "chat/completions",
    )
    assert (record.request_id, record.time_ms, record.engine, record.stream) == (
        "rid",
        1_000,
        "http://e",
        False,
    )
    assert (record.outcome, record.status) == ("ok", 200)
    assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (10, 20, 4)
    assert (record.latency_ms, record.ttft_ms) == (250.0, 12.5)
    assert settlement.id == record.id
    limits = settlement.limits
    assert limits is not None
    assert (limits.lease, limits.delta, limits.key_tpm, limits.tenant_tpm) == (
        "lease-1",
        30 - 300,
        1000,
        5000,
    )


def test_a_request_no_engine_received_leaves_no_record_but_gives_its_reservation_back() -> None:
    nowhere = ProxyResult(None, 503, Outcome.ENGINE_UNAVAILABLE, None, None, 0.01)
    settlement = settlement_of(CHARGE, nowhere)
    assert settlement is not None
    assert settlement.record is None
    assert settlement.limits is not None
    assert settlement.limits.delta == -300
    assert settlement_of(dataclasses.replace(CHARGE, admission=None), nowhere) is None


def test_refusals_cost_nothing_and_a_cut_before_any_report_keeps_the_reservation() -> None:
    for outcome in (Outcome.REJECTED, Outcome.ENGINE_ERROR, Outcome.TIMEOUT):
        failed = dataclasses.replace(OK, outcome=outcome, usage=None)
        refused = settlement_of(CHARGE, failed)
        assert refused is not None
        assert refused.limits is not None
        assert refused.limits.delta == -300, outcome
    left = dataclasses.replace(OK, outcome=Outcome.CLIENT_DISCONNECTED, usage=None, status=499)
    settlement = settlement_of(CHARGE, left)
    assert settlement is not None
    assert settlement.limits is not None
    assert settlement.limits.delta == 0
    assert settlement.record is not None
    assert (settlement.record.outcome, settlement.record.total_tokens) == ("client_disconnected", 0)


def test_a_request_its_client_left_before_any_report_is_billed_its_prompt_estimate() -> None:
    estimated = dataclasses.replace(CHARGE, prompt_estimates=lambda: [42])
    for outcome in (Outcome.CLIENT_DISCONNECTED, Outcome.SLOW_CLIENT):
        left = dataclasses.replace(OK, outcome=outcome, usage=None, status=499)
        settlement = settlement_of(estimated, left)
        assert settlement is not None
        assert settlement.record is not None
        assert (settlement.record.prompt_tokens, settlement.record.completion_tokens) == (42, 0)
        assert settlement.limits is not None
        assert settlement.limits.delta == 0  # the token limits keep the whole reservation
    for outcome in (Outcome.ENGINE_ERROR, Outcome.TIMEOUT, Outcome.GATEWAY_SHUTDOWN):
        failed = settlement_of(estimated, dataclasses.replace(OK, outcome=outcome, usage=None))
        assert failed is not None
        assert failed.record is not None
        assert failed.record.total_tokens == 0, outcome  # not the client's doing
    reported = settlement_of(
        estimated, dataclasses.replace(OK, outcome=Outcome.CLIENT_DISCONNECTED)
    )
    assert reported is not None
    assert reported.record is not None
    assert reported.record.prompt_tokens == 10  # the engine's report, when there is one


class Recording(Settler):
    """A settler without a ledger that notes how each settlement was submitted."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(None, MeteringSettings(spill_dir=tmp_path), Metrics())
        self.submitted: list[tuple[str, bool]] = []

    def submit(self, settlement: Settlement, *, frees_slot: bool = False) -> None:
        self.submitted.append((settlement.scope_id, frees_slot))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_settlement_that_frees_a_tight_slot_or_many_tokens_is_submitted_as_one(
    tmp_path: Path,
) -> None:
    settler = Recording(tmp_path)
    accounting = Accounting(settler)
    slot, roomy = Limits(max_concurrency=4), Limits(max_concurrency=TIGHT_CONCURRENCY)
    # (a reservation of a twentieth of a tpm limit or more gives back tokens another replica's
    # next request may be refused for: at once too)
    near = Limits(tpm=ADMISSION.reserved_tokens * TIGHT_TOKEN_SHARE)
    far = Limits(tpm=ADMISSION.reserved_tokens * TIGHT_TOKEN_SHARE + 1)
    free = dataclasses.replace(CALLER, key_limits=Limits(), tenant_limits=Limits())
    callers = {
        "no-slot": free,
        "key-slot": dataclasses.replace(free, key_id="key-slot", key_limits=slot),
        "tenant-slot": dataclasses.replace(free, key_id="tenant-slot", tenant_limits=slot),
        "roomy": dataclasses.replace(free, key_id="roomy", key_limits=roomy, tenant_limits=roomy),
        "tpm-near": dataclasses.replace(free, key_id="tpm-near", tenant_limits=near),
        "tpm-far": dataclasses.replace(free, key_id="tpm-far", key_limits=far),
    }
    for caller in callers.values():
        await accounting.reporter(dataclasses.replace(CHARGE, caller=caller))(OK)
    unlimited = dataclasses.replace(CHARGE, caller=callers["key-slot"], admission=None)
    await accounting.reporter(unlimited)(OK)  # nothing admitted: no slot to free
    assert settler.submitted == [
        ("k1", False),
        ("key-slot", True),
        ("tenant-slot", True),
        ("roomy", False),  # a slot among many: it may linger
        ("tpm-near", True),
        ("tpm-far", False),
        ("key-slot", False),
    ]


def test_a_batch_left_before_every_prompt_reported_is_billed_the_estimate_of_the_others() -> None:
    # vLLM reports a batch's prompts one by one, each with its first token: a client that left
    # while a long prompt behind a short one was still being read paid for the short one alone.
    estimated = dataclasses.replace(CHARGE, prompt_estimates=lambda: [2, 3000, 40])
    partial_usage = Usage(prompt_tokens=1, completion_tokens=2, prompts=(0,))
    left = dataclasses.replace(
        OK, outcome=Outcome.CLIENT_DISCONNECTED, status=499, usage=partial_usage
    )
    settlement = settlement_of(estimated, left)
    assert settlement is not None
    assert settlement.record is not None
    assert (settlement.record.prompt_tokens, settlement.record.completion_tokens) == (3041, 2)
    assert settlement.limits is not None
    assert settlement.limits.delta == 3043 - ADMISSION.reserved_tokens  # the limits too
    cut = settlement_of(estimated, dataclasses.replace(left, outcome=Outcome.ENGINE_ERROR))
    assert cut is not None
    assert cut.record is not None
    assert cut.record.prompt_tokens == 1  # the engine's doing: what it reported
    whole = dataclasses.replace(partial_usage, prompts=None)  # a final report: every prompt
    final = settlement_of(estimated, dataclasses.replace(left, usage=whole))
    assert final is not None
    assert final.record is not None
    assert final.record.prompt_tokens == 1
