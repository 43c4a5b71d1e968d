"""What a fine-tuning job is billed: the tokens it trained on, as one usage record with route
`fine_tune` (its `prompt_tokens`), written once whoever writes it (the record's id is the job's).

- A job that succeeds is billed every token it trained on (outcome `ok`).
- A job its tenant cancels is billed the tokens trained until it stopped, steps before a pause
  included (outcome `cancelled`), as hosted fine-tuning bills a cancelled job: the trainer's
  time was spent whether or not a model came of it. Before, a cancel billed nothing, so a job
  cancelled at its last step had all of its training free. Its job's `trained_tokens` says the
  same count.
- A job that fails is billed nothing: the trainer was lost, the run hung or broke, or the
  training file was found wanting, before any model came of it.

A paused job keeps the count in its `trained_tokens` (a lower bound until it ends), so that
whoever ends it (a trainer after a resume, or the API cancelling it while no trainer holds it)
bills what was trained before the pause.
"""

from __future__ import annotations

import time

from gateway.finetune.jobs import Job
from gateway.metering.ledger import Ledger
from gateway.metering.record import FINE_TUNE_ROUTE, UsageRecord
from gateway.metering.settlement import Settlement

OK = "ok"
CANCELLED = "cancelled"  # the outcome of a cancelled job's record


def training_record(job: Job, tokens: int, *, worker: str, outcome: str, now: int) -> UsageRecord:
    """The record of `job`'s training, done by the trainer `worker` (its engine column)."""
    return UsageRecord(
        id="ft" + job.id.removeprefix("ftjob-"),
        request_id=job.id,
        time_ms=now * 1000,
        tenant=job.tenant,
        key_id=job.key_id,
        model=job.model,
        route=FINE_TUNE_ROUTE,
        engine=f"trainer:{worker}",
        stream=False,
        outcome=outcome,
        status=200,
        prompt_tokens=tokens,
        completion_tokens=0,
        cached_tokens=0,
        latency_ms=float((now - job.created_at) * 1000),
        ttft_ms=None,
    )


async def bill_training(
    ledger: Ledger, job: Job, tokens: int, *, worker: str, outcome: str, now: int | None = None
) -> None:
    """Write the job's record (once: a second write of the same job's changes nothing)."""
    record = training_record(
        job, tokens, worker=worker, outcome=outcome, now=int(time.time()) if now is None else now
    )
    await ledger.write([Settlement(record.id, job.tenant, job.key_id, record, None)])


async def bill_cancelled(ledger: Ledger, job: Job, tokens: int, *, worker: str) -> None:
    """A cancelled job's training until it stopped (`tokens`, or what its pauses recorded);
    nothing when it never trained."""
    trained = max(tokens, job.trained_tokens or 0)
    if trained > 0:
        await bill_training(ledger, job, trained, worker=worker, outcome=CANCELLED)
