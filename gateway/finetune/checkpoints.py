"""Where a paused training leaves its checkpoint (train_lora.py's `checkpoint_dir`), beside
where the job's adapter goes on the shared files volume, and its removal once the job ends."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from gateway.files.storage import DirectoryStorage
from gateway.finetune.jobs import Job

CHECKPOINT = "checkpoint.pt"  # train_lora.py's file in the directory (it runs in the engine venv)


def checkpoint_dir(storage: DirectoryStorage, job: Job) -> Path:
    return storage.path(job.tenant, f"{job.id}.checkpoint")


async def remove_checkpoint(storage: DirectoryStorage, job: Job) -> None:
    """Gone once the job succeeds, fails or is cancelled (a paused job keeps it)."""
    await asyncio.to_thread(shutil.rmtree, checkpoint_dir(storage, job), True)
