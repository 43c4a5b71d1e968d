"""A trainer that stops (SIGTERM: a rolling update; Ctrl-C under `llmaas up`) lets the job in
training write a checkpoint, as a pause does, and queues it again to go on from there. It used
to cut the run at once (SIGTERM to the child), and the job, queued again, started over: up to
`stall_timeout_s` of training lost at every restart of a trainer (seen at step 95 of 120 under
`llmaas up`). A real trainer, a real Redis, the real `openai` client; the training child is a
stand-in script."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import openai
import pytest
import yaml

from gateway.finetune.checkpoints import CHECKPOINT
from gateway.finetune.trainer import SCRIPT
from tests.integration.finetune_stack import (
    BASE,
    TRAINED,
    finetune_stack,
    ft_fixture,
    new_job,
    reading_its_run,
    stand_in,
    trainer,
)
from tests.integration.tenant_stack import TenantStack
from tests.support.cli import llmaas

pytestmark = pytest.mark.asyncio(loop_scope="session")

ft = ft_fixture("ft-stop")


async def messages(client: openai.AsyncOpenAI, job_id: str) -> list[str]:
    """The job's event messages, oldest first."""
    events = [e async for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
    return [e.message for e in reversed(events)]


async def stopped_while_training(
    ft: TenantStack, tenant: str, tmp_path: Path, *, pausing_s: float, grace_s: float
) -> tuple[openai.AsyncOpenAI, str, Path, asyncio.Task[object]]:
    """A job trained by a trainer given `grace_s` to checkpoint, whose child takes `pausing_s`
    to write its checkpoint, and that trainer told to stop: the client, the job, where its
    checkpoint goes, and the trainer's task (stopping)."""
    client, _, job_id = await new_job(ft, tenant)
    kept = ft.root / "files" / tenant / f"{job_id}.checkpoint" / CHECKPOINT
    child = stand_in(tmp_path, on_pause=True, pausing_s=pausing_s, checkpoint=kept)
    worker = trainer(ft, child, stop_checkpoint_s=grace_s)
    run: asyncio.Task[object] = asyncio.create_task(worker.run_job(tenant, job_id))
    await reading_its_run(ft, tenant, job_id, tmp_path)
    run.cancel()  # as `llmaas up` and `llmaas trainer` stop it
    return client, job_id, kept, run


async def queued_again(client: openai.AsyncOpenAI, run: asyncio.Task[object], job_id: str) -> None:
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    job = await client.fine_tuning.jobs.retrieve(job_id)
    assert (job.status, job.fine_tuned_model, job.error) == ("queued", None, None)


async def test_a_stopping_trainer_lets_the_job_write_its_checkpoint_and_queues_it_to_go_on(
    ft: TenantStack, tmp_path: Path
) -> None:
    client, job_id, kept, run = await stopped_while_training(
        ft, "stop-kept", tmp_path, pausing_s=0.3, grace_s=10
    )
    await queued_again(client, run, job_id)
    assert kept.is_file()  # asked to pause (SIGUSR1), not cut (SIGTERM)
    said = await messages(client, job_id)
    assert said[-2:] == [
        "Training stopped after step 2, its checkpoint written",
        "The trainer stopped; the job is queued again, to go on from its checkpoint",
    ]
    queue = await ft.redis.lrange("llmaas:ft:queue", 0, -1)
    assert f"stop-kept/{job_id}".encode() in queue
    # What it trained is kept with it, as a pause's: a cancel now bills it (and the checkpoint
    # goes). Taken again, its run would be given the same checkpoint directory, where
    # train_lora.py goes on from what it finds (tests/e2e/test_fine_tuning_e2e.py's pause).
    cancelled = await client.fine_tuning.jobs.cancel(job_id)
    assert (cancelled.status, cancelled.trained_tokens) == ("cancelled", TRAINED)
    assert not kept.exists()


async def test_a_terminals_signals_to_the_trainer_do_not_reach_its_training_run(
    ft: TenantStack, tmp_path: Path
) -> None:
    """Found by review: the training child ran in its trainer's process group, which under
    `llmaas up` in a terminal is the terminal's foreground group: Ctrl-C (SIGINT to the group)
    killed the run before its trainer could ask it for a checkpoint, and a hangup (SIGHUP,
    which `up` ignores) killed it outright, failing the job. It runs in a session of its own;
    its trainer stops it (as above) and a dying trainer takes it along (parent-death signal)."""
    client, job_id, kept, run = await stopped_while_training(
        ft,
        "own-session",
        tmp_path,
        pausing_s=1,
        grace_s=10,  # (alive a second after the stop)
    )
    child = int((tmp_path / "pid").read_text())
    assert os.getsid(child) == child != os.getsid(0)  # a session, and a process group, of its own
    assert os.getpgid(child) != os.getpgid(0)
    await queued_again(client, run, job_id)
    assert kept.is_file()


@pytest.mark.parametrize("grace_s", [0, 0.5], ids=["no-grace", "grace-too-short"])
async def test_a_run_that_cannot_checkpoint_in_time_is_cut_and_its_job_starts_over(
    ft: TenantStack, tmp_path: Path, grace_s: float
) -> None:
    tenant = f"stop-cut-{str(grace_s).replace('.', '')}"
    client, job_id, kept, run = await stopped_while_training(
        ft, tenant, tmp_path, pausing_s=30, grace_s=grace_s
    )
    await queued_again(client, run, job_id)  # long before the 30 s the checkpoint would take
    assert not kept.exists()
    said = await messages(client, job_id)
    assert said[-1] == "The trainer stopped; the job is queued again, to start over"
    cancelled = await client.fine_tuning.jobs.cancel(job_id)  # the lost steps are not billed
    assert (cancelled.status, cancelled.trained_tokens) == ("cancelled", None)


async def test_a_second_stop_cuts_the_checkpoint_short(ft: TenantStack, tmp_path: Path) -> None:
    """As a second Ctrl-C or SIGTERM: the trainer stops now."""
    client, job_id, kept, run = await stopped_while_training(
        ft, "stop-twice", tmp_path, pausing_s=30, grace_s=60
    )
    await asyncio.sleep(0.3)  # waiting for the checkpoint
    assert not run.done()
    run.cancel()
    await queued_again(client, run, job_id)
    assert not kept.exists()
    await client.fine_tuning.jobs.cancel(job_id)


async def test_the_checkpoint_file_looked_for_is_the_one_train_lora_writes() -> None:
    assert f'\nCHECKPOINT = "{CHECKPOINT}"\n' in SCRIPT.read_text()


async def test_a_job_that_fails_after_a_stop_says_it_trained_nothing_billed(
    ft: TenantStack, tmp_path: Path
) -> None:
    """The stop kept its count (60) with the job; the next run fails: the job is billed
    nothing, and says so (trained_tokens null), and its checkpoint goes."""
    client, job_id, kept, run = await stopped_while_training(
        ft, "stop-then-fail", tmp_path / "first", pausing_s=0, grace_s=10
    )
    await queued_again(client, run, job_id)
    assert kept.is_file()
    failing = tmp_path / "failing-python"
    failing.write_text("#!/bin/sh\necho 'out of memory' >&2\nexit 1\n")
    failing.chmod(0o755)
    ended = await asyncio.wait_for(trainer(ft, failing).run_job("stop-then-fail", job_id), 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("failed", None)
    assert (await client.fine_tuning.jobs.retrieve(job_id)).trained_tokens is None
    assert not kept.exists()


async def test_a_hangup_stops_the_trainer_command_as_a_sigterm_does(tmp_path: Path) -> None:
    """Found by review: `llmaas trainer` kept SIGHUP's default action, so a terminal's hangup
    (a closed ssh session) killed it outright: its run was cut (the parent-death signal) with no
    checkpoint, and the job, left `running`, was failed as lost once its heartbeat was overdue.
    A hangup stops it as SIGTERM and Ctrl-C do: a checkpoint, and the job queued again."""
    async with finetune_stack(tmp_path / "stack") as ft:  # (its own queue: no other job in it)
        client, _, job_id = await new_job(ft, "hangup")
        kept = ft.root / "files" / "hangup" / f"{job_id}.checkpoint" / CHECKPOINT
        child = stand_in(tmp_path / "child", on_pause=True, checkpoint=kept)
        where = ft.redis.connection_pool.connection_kwargs
        config = tmp_path / "trainer.yaml"
        settings = {
            "dev_mode": True,  # (no admin token nor key pepper: the trainer serves no one)
            "redis_url": f"redis://{where['host']}:{where['port']}/0",
            "files": {"dir": str(ft.root / "files")},
            "fine_tuning": {
                "base_models": {BASE: str(ft.root / "weights")},
                "trainer_python": str(child),
            },
        }
        config.write_text(yaml.safe_dump(settings))
        log = tmp_path / "trainer.log"
        with log.open("wb") as said:
            trainer = await asyncio.create_subprocess_exec(
                llmaas(), "trainer", "--config", str(config), stderr=said
            )
        try:
            try:
                await reading_its_run(ft, "hangup", job_id, tmp_path / "child")
            except TimeoutError:
                pytest.fail(f"the trainer never ran the job; it said:\n{log.read_text()}")
            trainer.send_signal(signal.SIGHUP)
            stopped = await asyncio.wait_for(trainer.wait(), 30)
        finally:
            if trainer.returncode is None:
                trainer.kill()
                await trainer.wait()
        job = await client.fine_tuning.jobs.retrieve(job_id)
    assert stopped == 0, stopped  # (a SIGHUP's default action: -1)
    assert (job.status, job.error) == ("queued", None)
    assert kept.is_file()  # asked to pause (SIGUSR1), as at a SIGTERM
