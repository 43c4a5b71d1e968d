"""What the fine-tuning tests share: a tenant stack with fine-tuning on (BASE is fine-tunable;
its weights directory is never read, no training runs here), a small valid training file, and
a real trainer whose training child is a stand-in script printing train_lora.py's lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import pytest_asyncio

from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Job
from gateway.finetune.trainer import Trainer
from gateway.settings import Settings
from tests.integration.conftest import MODEL
from tests.integration.tenant_stack import TenantStack, tenant_stack

BASE = MODEL
MAX_ACTIVE = 2  # fine_tuning.max_active_jobs_per_tenant
EXAMPLE = {
    "messages": [
        {"role": "user", "content": "What is the secret word?"},
        {"role": "assistant", "content": "Quokkalantern."},
    ]
}
DATASET = b"".join(orjson.dumps(EXAMPLE) + b"\n" for _ in range(4))


@asynccontextmanager
async def finetune_stack(
    root: Path, *, proxied: bool = False, **fine_tuning: Any
) -> AsyncIterator[TenantStack]:
    """A tenant stack whose files and adapters live under `root`; `fine_tuning` adds settings;
    `proxied`: the gateway reaches Redis through a RedisProxy (tenant_stack)."""
    settings = {
        "base_models": {BASE: str(root / "weights")},
        "max_active_jobs_per_tenant": MAX_ACTIVE,
        **fine_tuning,
    }
    async with tenant_stack(
        root, proxied=proxied, files={"dir": str(root / "files")}, fine_tuning=settings
    ) as stack:
        yield stack


async def upload_dataset(client: openai.AsyncOpenAI) -> str:
    """DATASET uploaded for fine-tuning: its file id."""
    made = await client.files.create(file=("train.jsonl", DATASET), purpose="fine-tune")
    return made.id


def ft_fixture(name: str, **fine_tuning: Any) -> Any:
    """A test module's `ft` fixture: its own finetune_stack under a directory named `name`."""

    @pytest_asyncio.fixture(scope="module", loop_scope="session")
    async def ft(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TenantStack]:
        async with finetune_stack(tmp_path_factory.mktemp(name), **fine_tuning) as stack:
            yield stack

    return ft


STEPS = [{"type": "step", "step": n, "steps": 8, "loss": 0.5, "tokens": 30 * n} for n in (1, 2)]
TRAINED = 60  # the tokens of the two steps the stand-in trains


def stand_in(
    where: Path,
    *,
    on_pause: bool,
    pausing_s: float = 0,
    steps: list[dict[str, Any]] = STEPS,
    checkpoint: Path | None = None,
) -> Path:
    """A training child that prints `steps`, writes its pid file, then waits: for ever, or
    until asked to pause (SIGUSR1), when it says so (after `pausing_s`, writing its checkpoint:
    an empty `checkpoint` file, if given) and exits as train_lora.py does (3)."""
    where.mkdir(exist_ok=True)
    child = where / "training-python"
    lines = "".join(f"echo '{json.dumps(step)}'\n" for step in steps)
    paused = {"type": "paused", "step": steps[-1]["step"], "tokens": steps[-1]["tokens"]}
    said = json.dumps(json.dumps(paused))
    write = f"mkdir -p {checkpoint.parent}; touch {checkpoint}; " if checkpoint else ""
    # (in short sleeps: a stop cutting it leaves no long sleep behind holding its pipes)
    pausing = f"n=0; while [ $n -lt {round(pausing_s / 0.05)} ]; do sleep 0.05; n=$((n+1)); done; "
    trap = f"trap '{pausing}{write}echo {said}; exit 3' USR1\n" if on_pause else ""
    wait = "while true; do sleep 0.05; done\n" if on_pause else "exec sleep 60\n"
    child.write_text(f"#!/bin/sh\n{trap}{lines}echo $$ > {where / 'pid'}\n{wait}")
    child.chmod(0o755)
    return child


def trainer(ft: TenantStack, child: Path, **fine_tuning: Any) -> Trainer:
    """A trainer of `ft`'s jobs whose training child is `child`; `fine_tuning` adds settings."""
    fine_tuning = {
        "base_models": {BASE: str(ft.root / "weights")},
        "trainer_python": str(child),
        **fine_tuning,
    }
    settings = Settings.model_validate(
        {"dev_mode": True, "files": {"dir": str(ft.root / "files")}, "fine_tuning": fine_tuning}
    )
    return Trainer(settings, ft.redis, worker="test:trainer")


async def training(
    ft: TenantStack, tenant: str, job_id: str, child: Path
) -> asyncio.Task[Job | None]:
    """A trainer running `tenant`'s job now with `child`, until the child has printed its
    steps (its pid file, beside it, is written): the trainer's task."""
    run = asyncio.create_task(trainer(ft, child).run_job(tenant, job_id))
    await reading_its_run(ft, tenant, job_id, child.parent)
    return run


async def reading_its_run(ft: TenantStack, tenant: str, job_id: str, where: Path) -> None:
    """Until the stand-in child in `where` runs (its pid file) and its trainer has read the
    run's first step (a "Step 1/" event newer than the job's latest start): a stop or a pause
    from then on finds the trainer reading the run. The pid file alone was once too early
    (CI30): the child ran while the trainer still awaited its pipes (asyncio's subprocess
    start), and a stop there cuts the start (the child killed, the job queued to start over),
    not the run."""
    store = JobStore(ft.redis)
    async with asyncio.timeout(10):
        while not (where / "pid").exists():  # noqa: ASYNC110 (a file, no event to await)
            await asyncio.sleep(0.05)
        while True:
            job = await store.get(tenant, job_id)
            assert job is not None
            events, _ = await store.events(job, 100, None)  # newest first
            for event in events:
                if event.message.startswith("Step 1/"):
                    return
                if event.message.startswith("Fine-tuning job started"):
                    break  # (an earlier run's steps are older)
            await asyncio.sleep(0.02)


async def new_job(ft: TenantStack, tenant: str) -> tuple[openai.AsyncOpenAI, str, str]:
    """A new key of `tenant` and a job of it: the client, the key and the job's id."""
    key = await ft.key(tenant)
    client = ft.client(key)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    return client, key, job.id
