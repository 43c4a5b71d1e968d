"""`llmaas trainer`: the worker that takes fine-tuning jobs from the queue and trains them.

One job at a time per worker (run more workers for more at once). A job is trained by
`train_lora.py` in a child process, run with `fine_tuning.trainer_python` (the engine venv:
torch, transformers, peft); the child reports progress as JSON lines, which become the job's
events. While it trains, the worker refreshes the job's heartbeat and watches for a cancel (the
child is stopped at once), and stops a run that prints nothing for
`fine_tuning.stall_timeout_s` (hung), failing its job. On success the adapter lies next to the
tenant's files, the model `ft:<base>:<tenant>:<suffix>:<id>` is registered for that tenant
only, and the trained tokens are billed as a `fine_tune` usage record (a cancelled job's, those
trained until it stopped: gateway/finetune/billing.py). A stopped worker (SIGTERM: a
rolling update, Ctrl-C) lets its job's run write a checkpoint, as a pause does, for at most
`fine_tuning.stop_checkpoint_s`, and puts the job back in the queue, to go on from there; a killed
one leaves it to the heartbeat sweep, which fails it with a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.embedded.process_group import stop_process, terminated_with_parent
from gateway.files.storage import DirectoryStorage, bytes_under
from gateway.files.store import FileStore
from gateway.finetune.billing import OK, bill_cancelled, bill_training
from gateway.finetune.checkpoints import CHECKPOINT, checkpoint_dir, remove_checkpoint
from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Job, fine_tuned_name
from gateway.finetune.progress import Progress
from gateway.finetune.resolve import resolve
from gateway.finetune.serving import announce
from gateway.finetune.sweep import fail_overdue
from gateway.metering.ledger import Ledger
from gateway.redis_client import redis_error
from gateway.settings import Settings

SCRIPT = Path(__file__).with_name("train_lora.py")
POLL_S = 1.0  # how often the queue is waited on, and a running job's cancel checked


@dataclass(slots=True)
class Outcome:
    ok: bool
    message: str = ""
    adapter: Path | None = None
    trained_tokens: int = 0
    steps: int = 0
    loss: float | None = None
    param: str | None = None  # the job's field at fault (training_file: its data), if one is


class Trainer:
    def __init__(self, settings: Settings, redis: Redis, worker: str | None = None) -> None:
        self.settings = settings
        self.store = JobStore(redis)
        self.ledger = Ledger(redis, settings.metering, settings.limits.window_s)
        self.storage = DirectoryStorage(settings.files.dir)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.log = logging.getLogger("llmaas.trainer")
        self.stopping = asyncio.Event()
        self.training: Job | None = None  # the job it trains now, if any

    async def run(self) -> None:
        """Take and train jobs until `stopping` is set."""
        self.log.info("trainer %s waiting for jobs", self.worker)
        try:
            while not self.stopping.is_set():
                try:
                    await fail_overdue(self.store, self.storage)
                    await self.store.queue_stranded(time.time_ns() // 1_000_000)
                    item = await self.store.next_queued(POLL_S)
                    if item is not None:
                        await self.run_job(*item)
                except (RedisError, OSError) as exc:  # Redis away: its heartbeat sweep covers us
                    self.log.warning("trainer: Redis unavailable (%s); retrying", redis_error(exc))
                    await asyncio.sleep(POLL_S)
        finally:
            await self.ledger.close()

    async def run_job(self, tenant: str, job_id: str) -> Job | None:
        """Claim and train one job; the job as it ended (None: it was not ours to run)."""
        job = await self.store.get(tenant, job_id)
        if job is None or job.status != "queued":
            return None
        await self.store.heartbeat(job, self._deadline_ms())  # before the claim: never unseen
        settings = self.settings.fine_tuning
        hyper, learning_rate = resolve(job.hyperparameters, job.examples, settings)
        claimed = await self.store.transition(
            tenant,
            job_id,
            ("queued",),
            {"status": "running", "worker": self.worker, "hyperparameters": hyper},
            message="Fine-tuning job started",  # (the worker, a pod's name, is the operator's: in
            # the job's record and the trainer's log)
        )
        if claimed is None:
            # Not removed: another trainer that claimed it (the job queued twice: paused and
            # resumed) beats under the same name, and a job left without a heartbeat is failed
            # as lost. One nobody claimed (cancelled, paused) is forgotten once it is overdue.
            return None
        self.training = claimed
        self.log.info("trainer %s started job %s of tenant %s", self.worker, job_id, tenant)
        try:
            outcome = await self._train(claimed, learning_rate)
            ended = await self._finish(claimed, outcome)
        except asyncio.CancelledError:  # this worker stops: the job goes back to the queue
            await asyncio.shield(self.requeue(claimed))
            raise
        finally:
            self.training = None
            await asyncio.shield(self.store.done(claimed))
        if ended is not None and ended.status == "paused":  # cancelled as this worker let go?
            now_job = await self.store.get(tenant, job_id)  # (then the API saw it held)
            if now_job is not None and now_job.status == "cancelled":
                ended = await self._cancelled(claimed, now_job, outcome.trained_tokens)
        return ended

    async def _train(self, job: Job, learning_rate: float) -> Outcome:
        settings = self.settings.fine_tuning
        base = settings.base_models.get(job.model)
        if base is None:
            return Outcome(False, f"The base model '{job.model}' is no longer configured.")
        training_file = self.storage.path(job.tenant, job.training_file)
        if not await asyncio.to_thread(training_file.is_file):  # (the API refuses to delete it)
            return Outcome(
                False,
                f"The training file {job.training_file} no longer exists.",
                param="training_file",
            )
        hyper = job.hyperparameters
        rank = int(hyper.lora_rank)  # resolved
        spec = {
            "base_model_dir": str(base),
            "training_file": str(training_file),
            "output_dir": str(self.storage.path(job.tenant, job.id)),
            "checkpoint_dir": str(checkpoint_dir(self.storage, job)),
            "n_epochs": hyper.n_epochs,
            "batch_size": hyper.batch_size,
            "learning_rate": learning_rate,
            "lora_rank": rank,
            "lora_alpha": 2 * rank,
            "seed": job.seed,
            "threads": settings.threads or os.cpu_count() or 1,
            "max_length": settings.max_length,
        }
        # Through a pipe: a file for it, in a temporary directory, stayed behind a trainer
        # killed (SIGKILL, OOM) during the run.
        return await self._run_child(job, json.dumps(spec).encode())

    async def _run_child(self, job: Job, spec: bytes) -> Outcome:
        python = str(self.settings.fine_tuning.trainer_python or sys.executable)
        child = await asyncio.create_subprocess_exec(
            python,
            str(SCRIPT),
            "--spec",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=terminated_with_parent(),  # a killed trainer takes its child along
            # Out of its trainer's process group: under `llmaas up` in a terminal that is the
            # foreground group, whose Ctrl-C killed the run before it was asked to checkpoint
            # (SIGUSR1, below) and whose hangup killed it outright. The trainer stops it.
            start_new_session=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdin.write(spec)  # (a few hundred bytes: within the pipe's buffer)
        child.stdin.close()
        errors = asyncio.create_task(_tail(child.stderr))
        watch = asyncio.create_task(self._watch(job, child))
        progress = Progress(self.store, job)
        stall_s = self.settings.fine_tuning.stall_timeout_s
        quiet = asyncio.timeout(stall_s)  # moved on by every line: fires when the run hangs
        code: int | None = None
        try:
            async with quiet:
                async for line in child.stdout:
                    quiet.reschedule(asyncio.get_running_loop().time() + stall_s)
                    await progress.line(line)
            code = await child.wait()
        except TimeoutError:
            if not quiet.expired():
                raise
            self.log.warning("job %s printed nothing for %g s: stopping it", job.id, stall_s)
        except asyncio.CancelledError:  # this worker stops: a checkpoint first, if it can
            try:
                await self._checkpoint_before_stop(job, child, progress)  # (a second cancel cuts)
            finally:
                errors.cancel()  # nobody waits for the reason now
            raise
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            if child.returncode is None:  # hung, or we are being cancelled (the trainer stops)
                await stop_process(child)
        tail = await errors
        await progress.flush()
        if code is None:
            return failed_training(
                f"no progress for {stall_s:g} s; the run was stopped", progress.tokens
            )
        done = progress.done
        if code == 0 and done is not None:
            return Outcome(
                True,
                adapter=Path(done["adapter_dir"]),
                trained_tokens=int(done.get("trained_tokens", 0)),
                steps=progress.steps,
                loss=progress.loss,
            )
        reason = progress.error or (tail.strip().splitlines() or [f"exit code {code}"])[-1]
        # the tenant reads it: the shared volume's layout stays out
        reason = reason.replace(f"{self.storage.root}{os.sep}", "")
        return failed_training(reason, progress.tokens)

    async def _checkpoint_before_stop(
        self, job: Job, child: asyncio.subprocess.Process, progress: Progress
    ) -> None:
        """Ask the run to pause, as a tenant's pause does (a checkpoint at the end of its step,
        then it exits), reading its last lines, for at most `stop_checkpoint_s`: its job, queued
        again, goes on from there. A run still going past it is stopped by the caller."""
        grace_s = self.settings.fine_tuning.stop_checkpoint_s
        if child.returncode is not None or grace_s <= 0:
            return
        assert child.stdout is not None
        self.log.info("stopping: job %s writes a checkpoint (%g s at most)", job.id, grace_s)
        progress.stopping = True
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                async for line in child.stdout:
                    await progress.line(line)
                await child.wait()
        await progress.flush()
        if progress.checkpointed:  # kept with the job, as a pause's: what a cancel bills
            update = {"trained_tokens": progress.tokens}
            await self.store.transition(job.tenant, job.id, ("running",), update)

    async def _watch(self, job: Job, child: asyncio.subprocess.Process) -> None:
        """Refresh the heartbeat; stop the child as soon as the job is cancelled, and ask it
        to pause (write its checkpoint at the end of its step, then exit) when it is paused."""
        beat_every = self.settings.fine_tuning.heartbeat_timeout_s / 4
        last_beat = time.monotonic()
        pausing = False
        while True:
            await asyncio.sleep(min(POLL_S, beat_every))
            if time.monotonic() - last_beat >= beat_every:
                await self.store.heartbeat(job, self._deadline_ms())
                last_beat = time.monotonic()
            current = await self.store.get(job.tenant, job.id)
            status = current and current.status
            if status == "running":
                continue
            if status == "paused":
                if not pausing:  # (its heartbeat goes on until it has exited)
                    self.log.info("job %s is paused: its training writes a checkpoint", job.id)
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGUSR1)
                    pausing = True
                continue
            self.log.info("job %s is %s: stopping its training", job.id, status)
            await stop_process(child)
            return

    async def _finish(self, job: Job, outcome: Outcome) -> Job | None:
        now = int(time.time())
        if not outcome.ok:
            if outcome.adapter is not None:
                shutil.rmtree(outcome.adapter, ignore_errors=True)
            update = {
                "status": "failed",
                "finished_at": now,
                "error": {
                    "code": "training_failed",
                    "message": outcome.message,
                    "param": outcome.param,
                },
                "trained_tokens": None,  # billed nothing (a pause or stop had kept a count)
            }
            failed = await self.store.transition(
                job.tenant, job.id, ("running",), update, message=outcome.message, level="error"
            )
            if failed is None:  # cancelled or paused: whatever was written goes, but a pause's
                await asyncio.to_thread(shutil.rmtree, self.storage.path(job.tenant, job.id), True)
                return await self._stopped(job, outcome.trained_tokens)
            await remove_checkpoint(self.storage, job)
            return failed
        name = fine_tuned_name(job.model, job.tenant, job.suffix, job.id)
        assert outcome.adapter is not None  # (a run that succeeded made one)
        size = await asyncio.to_thread(bytes_under, outcome.adapter)
        record = {"base": job.model, "adapter": str(outcome.adapter), "job": job.id}
        await self.store.put_model(job.tenant, name, {**record, "created": now, "bytes": size})
        tokens = outcome.trained_tokens
        await bill_training(self.ledger, job, tokens, worker=self.worker, outcome=OK, now=now)
        succeeded = await self.store.transition(  # paused as it ended: it is done all the same
            job.tenant,
            job.id,
            ("running", "paused"),
            {
                "status": "succeeded",
                "finished_at": now,
                "fine_tuned_model": name,
                "trained_tokens": outcome.trained_tokens,
                "steps": outcome.steps,
                "train_loss": outcome.loss,
            },
            message=f"The job has successfully completed: {name}",
        )
        if succeeded is None:  # cancelled at the last moment: take the model back
            await self.store.delete_model(job.tenant, name)
            await asyncio.to_thread(shutil.rmtree, self.storage.path(job.tenant, job.id), True)
            return await self.store.get(job.tenant, job.id)
        await remove_checkpoint(self.storage, job)
        # On the volume every tenant shares, as its files are: counted in its bytes
        # (files.max_bytes_per_tenant) until the model is deleted.
        await FileStore(self.store.redis).add_bytes(job.tenant, size)
        await announce(self.store.redis, job.tenant, name)  # gateways load it into engines
        return succeeded

    async def _stopped(self, job: Job, tokens: int) -> Job | None:
        """A run its tenant paused or cancelled, `tokens` trained by then: kept on a paused job
        (its checkpoint too), billed for a cancelled one (gateway/finetune/billing.py)."""
        now_job = await self.store.get(job.tenant, job.id)
        if now_job is not None and now_job.status == "paused":
            if tokens <= (now_job.trained_tokens or 0):
                return now_job
            update = {"trained_tokens": tokens}
            return await self.store.transition(job.tenant, job.id, ("paused",), update) or now_job
        return await self._cancelled(job, now_job, tokens)

    async def _cancelled(self, job: Job, now_job: Job | None, tokens: int) -> Job | None:
        """`job` ended, and not by a pause: its checkpoint goes; cancelled, it is billed."""
        await remove_checkpoint(self.storage, job)
        if now_job is None or now_job.status != "cancelled":
            return now_job
        await bill_cancelled(self.ledger, now_job, tokens, worker=self.worker)
        trained = max(tokens, now_job.trained_tokens or 0)
        if not trained:
            return now_job
        update = {"trained_tokens": trained}
        return await self.store.transition(job.tenant, job.id, ("cancelled",), update) or now_job

    async def requeue(self, job: Job) -> None:
        """A job this worker stops training before it ends goes back to the queue's front, to
        go on from its checkpoint if it has one."""
        kept = await asyncio.to_thread((checkpoint_dir(self.storage, job) / CHECKPOINT).is_file)
        then = "go on from its checkpoint" if kept else "start over"
        back = await self.store.transition(
            job.tenant,
            job.id,
            ("running",),
            {"status": "queued", "worker": None},
            message=f"The trainer stopped; the job is queued again, to {then}",
            level="warn",
        )
        if back is not None:
            await self.store.put_first(back)

    def _deadline_ms(self) -> int:
        return int((time.time() + self.settings.fine_tuning.heartbeat_timeout_s) * 1000)


async def _tail(stream: asyncio.StreamReader, keep: int = 8192) -> str:
    """The last `keep` bytes of a stream (the child's stderr: the reason when it fails)."""
    buffer = b""
    while chunk := await stream.read(65536):
        buffer = (buffer + chunk)[-keep:]
    return buffer.decode("utf-8", "replace")


def failed_training(reason: str, trained_tokens: int = 0) -> Outcome:
    """What a run that did not end with its adapter says: the trainer's reason (train_lora.py
    names a bad example by its line: the training file is at fault), and the tokens it trained
    on until then (billed only if its job was cancelled)."""
    at_fault = "training_file" if reason.startswith("line ") else None
    return Outcome(
        False, f"Training failed: {reason[:500]}", trained_tokens=trained_tokens, param=at_fault
    )
