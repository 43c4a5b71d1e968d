"""Jobs whose trainer went silent are failed, never left `running`.

A trainer refreshes its job's heartbeat deadline (`llmaas:ft:running`) as it trains. A trainer
that was killed stops doing so; whoever looks next (any trainer's loop, or a gateway reading
the job) fails it with a message, and removes the checkpoint a pause or a stop left it (it
stayed on the files volume for good). A job is claimed with its deadline set first, and
finished before its deadline is removed, so a running job without one was lost.
"""

from __future__ import annotations

import time

from gateway.files.storage import DirectoryStorage
from gateway.finetune.checkpoints import remove_checkpoint
from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Job

LOST = "The trainer running this job stopped reporting (it was stopped or failed); try again."


async def fail_if_lost(store: JobStore, storage: DirectoryStorage, job: Job) -> Job:
    """`job`, failed first if it is running without a live trainer."""
    if job.status != "running":
        return job
    if await store.trained_now(job.tenant, job.id):
        return job
    return await _fail(store, storage, job.tenant, job.id) or job


async def fail_overdue(store: JobStore, storage: DirectoryStorage) -> int:
    """Fail every running job whose trainer missed its deadline; how many there were."""
    overdue = await store.overdue(int(time.time() * 1000))
    for tenant, job_id in overdue:
        await _fail(store, storage, tenant, job_id)
        await store.forget_running(tenant, job_id)
    return len(overdue)


async def _fail(store: JobStore, storage: DirectoryStorage, tenant: str, job_id: str) -> Job | None:
    update = {
        "status": "failed",
        "finished_at": int(time.time()),
        "error": {"code": "trainer_lost", "message": LOST, "param": None},
        "trained_tokens": None,  # a failed job is billed nothing (billing.py)
    }
    failed = await store.transition(
        tenant, job_id, ("running",), update, message=LOST, level="error"
    )
    if failed is not None:
        await remove_checkpoint(storage, failed)
    return failed
