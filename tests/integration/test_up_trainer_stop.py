"""`llmaas up` stopping its trainer (gateway/embedded/up.py, `_stopped`): it says on stderr that
the job in training writes a checkpoint, for how long at most, and that Ctrl-C again cuts it
short; Ctrl-C again does (the job is queued again, to start over), where the interpreter's
KeyboardInterrupt would have left the job `running` until the heartbeat sweep failed it. Until
2026-12-05 nothing was said: the trainer's log had stopped with the gateway's, and `llmaas up`
seemed to hang for the checkpoint's seconds. A real trainer and Redis; a stand-in training
child."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import openai
import pytest

from gateway.embedded.up import _stopped
from gateway.finetune.checkpoints import CHECKPOINT
from tests.integration.finetune_stack import ft_fixture, new_job, reading_its_run, stand_in, trainer
from tests.integration.tenant_stack import TenantStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

ft = ft_fixture("ft-up-stop")


async def _status(client: openai.AsyncOpenAI, job_id: str) -> tuple[str, str]:
    job = await client.fine_tuning.jobs.retrieve(job_id)
    events = (await client.fine_tuning.jobs.list_events(job_id, limit=1)).data
    return job.status, events[0].message


@pytest.mark.parametrize("again", [False, True], ids=["waited-for", "ctrl-c-again"])
async def test_up_says_its_trainer_writes_a_checkpoint_and_ctrl_c_again_cuts_it(
    ft: TenantStack, tmp_path: Path, capsys: pytest.CaptureFixture[str], again: bool
) -> None:
    tenant = f"up-stop-{'again' if again else 'wait'}"
    client, _, job_id = await new_job(ft, tenant)
    kept = ft.root / "files" / tenant / f"{job_id}.checkpoint" / CHECKPOINT
    pausing_s = 30 if again else 0.3
    child = stand_in(tmp_path, on_pause=True, pausing_s=pausing_s, checkpoint=kept)
    worker = trainer(ft, child, stop_checkpoint_s=60)
    running = asyncio.create_task(worker.run_job(tenant, job_id))
    await reading_its_run(ft, tenant, job_id, tmp_path)
    stopping = asyncio.create_task(_stopped(worker, running))
    async with asyncio.timeout(10):
        while "[trainer]" not in (said := capsys.readouterr().err):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert said == (
        f"[trainer] stopping: {job_id} writes a checkpoint to go on from next time (60 s at "
        "most; Ctrl-C again cuts it short, and the job starts over)\n"
    )
    if again:  # its handler is in place once that is printed (nothing awaited in between)
        await asyncio.sleep(0.3)
        if stopping.done():  # (CI30: a stop during the child's start, before reading_its_run)
            events = (await client.fine_tuning.jobs.list_events(job_id, limit=20)).data
            pytest.fail(f"the stop ended by itself: {[e.message for e in reversed(events)]}")
        os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(stopping, 10)
    assert running.cancelled()
    if again:
        assert await _status(client, job_id) == (
            "queued",
            "The trainer stopped; the job is queued again, to start over",
        )
        assert not kept.exists()
    else:
        assert await _status(client, job_id) == (
            "queued",
            "The trainer stopped; the job is queued again, to go on from its checkpoint",
        )
    await client.fine_tuning.jobs.cancel(job_id)
