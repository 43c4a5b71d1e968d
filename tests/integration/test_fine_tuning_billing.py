"""What a fine-tuning job is billed, through the real `openai` client, a real Redis and a real
trainer whose training child is a stand-in script printing train_lora.py's lines: a cancelled
job is billed the tokens trained until it stopped (pauses included), as its `trained_tokens`
says; a failed one nothing. A cancel used to bill nothing, however far training had gone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.finetune.jobs import Job
from tests.integration.finetune_stack import (
    BASE,
    STEPS,
    TRAINED,
    ft_fixture,
    new_job,
    reading_its_run,
    stand_in,
    trainer,
    training,
    upload_dataset,
)
from tests.integration.tenant_stack import TenantStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ft = ft_fixture("ft-billing")


async def training_records(ft: TenantStack, key: str) -> list[dict[str, Any]]:
    """The tenant's fine_tune usage records (its own /v1/usage/records)."""
    headers = {"authorization": f"Bearer {key}"}
    async with ft.http.get(f"{ft.gateway}/v1/usage/records", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        lines = (await resp.text()).splitlines()
    records = [orjson.loads(line) for line in lines if line.strip()]
    return [r for r in records if r["route"] == "fine_tune"]


async def test_a_job_cancelled_while_training_is_billed_what_it_trained(
    ft: TenantStack, tmp_path: Path
) -> None:
    client, key, job_id = await new_job(ft, "bill-running")
    run = await training(ft, "bill-running", job_id, stand_in(tmp_path, on_pause=False))
    assert (await client.fine_tuning.jobs.cancel(job_id)).status == "cancelled"
    ended = await asyncio.wait_for(run, 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("cancelled", TRAINED)
    assert (await client.fine_tuning.jobs.retrieve(job_id)).trained_tokens == TRAINED
    records = await training_records(ft, key)
    assert [(r["prompt_tokens"], r["outcome"], r["request_id"]) for r in records] == [
        (TRAINED, "cancelled", job_id)
    ]


@pytest.mark.parametrize("resumed", [False, True], ids=["paused", "resumed-and-queued"])
async def test_a_job_cancelled_after_a_pause_is_billed_the_training_before_it(
    ft: TenantStack, tmp_path: Path, resumed: bool
) -> None:
    """No trainer holds it when it is cancelled: the API bills it (and removes the checkpoint
    a resumed job, queued again, still had)."""
    tenant = f"bill-{'resumed' if resumed else 'paused'}"
    client, key, job_id = await new_job(ft, tenant)
    run = await training(ft, tenant, job_id, stand_in(tmp_path, on_pause=True))
    assert str((await client.fine_tuning.jobs.pause(job_id)).status) == "paused"
    ended = await asyncio.wait_for(run, 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("paused", TRAINED)  # so far
    assert await training_records(ft, key) == []  # a pause bills nothing yet
    if resumed:
        assert (await client.fine_tuning.jobs.resume(job_id)).status == "queued"
    kept = ft.root / "files" / tenant / f"{job_id}.checkpoint"
    kept.mkdir(exist_ok=True)  # (as the paused run leaves it)
    cancelled = await client.fine_tuning.jobs.cancel(job_id)
    assert (cancelled.status, cancelled.trained_tokens) == ("cancelled", TRAINED)
    assert not kept.exists()
    records = await training_records(ft, key)
    assert [(r["prompt_tokens"], r["outcome"]) for r in records] == [(TRAINED, "cancelled")]


async def test_a_job_cancelled_while_its_pause_is_still_being_written_is_billed_by_its_trainer(
    ft: TenantStack, tmp_path: Path
) -> None:
    """Paused once (60 tokens), resumed, trained on (90), paused again and cancelled while its
    trainer still writes the checkpoint: the API leaves the bill to the trainer, which knows
    all 90 (the API knew the 60 of the first pause, and a bill is written once)."""
    tenant = "bill-letting-go"
    client, key, job_id = await new_job(ft, tenant)
    run = await training(ft, tenant, job_id, stand_in(tmp_path / "first", on_pause=True))
    await client.fine_tuning.jobs.pause(job_id)
    ended = await asyncio.wait_for(run, 10)
    assert ended is not None
    assert ended.trained_tokens == TRAINED
    await client.fine_tuning.jobs.resume(job_id)
    more: list[dict[str, Any]] = [
        *STEPS,
        {"type": "step", "step": 3, "steps": 8, "loss": 0.3, "tokens": 90},
    ]
    second = stand_in(tmp_path / "second", on_pause=True, pausing_s=2, steps=more)
    run = await training(ft, tenant, job_id, second)
    await client.fine_tuning.jobs.pause(job_id)
    await asyncio.sleep(1.5)  # its trainer has asked the child to pause (it polls every 1 s)
    assert (await client.fine_tuning.jobs.cancel(job_id)).status == "cancelled"
    assert not run.done()  # (still writing its checkpoint)
    ended = await asyncio.wait_for(run, 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("cancelled", 90)
    records = await training_records(ft, key)
    assert [(r["prompt_tokens"], r["outcome"]) for r in records] == [(90, "cancelled")]


async def test_a_failed_job_is_billed_nothing(ft: TenantStack, tmp_path: Path) -> None:
    child = tmp_path / "failing-python"
    lines = "".join(f"echo '{json.dumps(step)}'\n" for step in STEPS)
    child.write_text(f"#!/bin/sh\n{lines}echo 'out of memory' >&2\nexit 1\n")
    child.chmod(0o755)
    key = await ft.key("bill-failed")
    client = ft.client(key)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    ended = await asyncio.wait_for(trainer(ft, child).run_job("bill-failed", job.id), 10)
    assert ended is not None
    assert ended.status == "failed"
    assert ended.trained_tokens is None
    assert await training_records(ft, key) == []


async def test_a_diverged_run_fails_with_its_steps_shown(ft: TenantStack, tmp_path: Path) -> None:
    """Found by review: train_lora.py printed a NaN loss as `NaN`, which the trainer could not
    read: the step was dropped, events stopped at the last finite one. It sends the step with
    its loss null, then fails (train_lora.finite_loss): the step is an event, the job failed
    with the reason, billed nothing."""
    diverged = {"type": "step", "step": 3, "steps": 8, "loss": None, "tokens": 90}
    error = {"type": "error", "message": "training diverged at step 3: its loss is nan (…)"}
    child = tmp_path / "diverging-python"
    lines = "".join(f"echo '{json.dumps(line)}'\n" for line in [*STEPS, diverged, error])
    child.write_text(f"#!/bin/sh\n{lines}exit 1\n")
    child.chmod(0o755)
    key = await ft.key("bill-diverged")
    client = ft.client(key)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    ended = await asyncio.wait_for(trainer(ft, child).run_job("bill-diverged", job.id), 10)
    assert ended is not None
    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error.message == f"Training failed: {error['message']}"
    events = (await client.fine_tuning.jobs.list_events(job.id, limit=50)).data
    last_step = next(e for e in events if e.type == "metrics")
    assert last_step.message == "Step 3/8: training loss=not a number"
    assert last_step.data == {"step": 3, "total_steps": 8, "train_loss": None, "tokens": 90}
    assert await training_records(ft, key) == []


async def test_a_cancel_as_the_trainer_lets_go_of_a_paused_job_is_billed_by_that_trainer(
    ft: TenantStack, tmp_path: Path
) -> None:
    """The cancel lands after the trainer's last look at the paused job and before it lets go:
    the API sees the job still held and leaves the bill to the trainer, which looks again once
    it has let go (without that second look, nobody bills it)."""
    tenant = "bill-let-go"
    client, key, job_id = await new_job(ft, tenant)
    worker = trainer(ft, stand_in(tmp_path, on_pause=True))
    letting_go = worker.store.done

    async def cancelled_then_let_go(job: Job) -> None:
        assert (await client.fine_tuning.jobs.cancel(job_id)).status == "cancelled"
        await letting_go(job)

    worker.store.done = cancelled_then_let_go  # type: ignore[method-assign]
    run = asyncio.create_task(worker.run_job(tenant, job_id))
    await reading_its_run(ft, tenant, job_id, tmp_path)
    await client.fine_tuning.jobs.pause(job_id)
    ended = await asyncio.wait_for(run, 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("cancelled", TRAINED)
    records = await training_records(ft, key)
    assert [(r["prompt_tokens"], r["outcome"]) for r in records] == [(TRAINED, "cancelled")]
    assert not (ft.root / "files" / tenant / f"{job_id}.checkpoint").exists()
