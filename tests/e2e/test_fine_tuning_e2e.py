"""Fine-tuning end to end on CPU: the unmodified `openai` client uploads a tiny chat dataset
that teaches SmolLM2 a secret word, creates a job, follows its events while `llmaas trainer`
(the installed entry point, a separate process) trains a LoRA adapter, and then asks the
fine-tuned model and the base model the same question through the gateway, which loads the
adapter into the real vLLM engine on first use. Also: a cancelled job stops training and frees
the worker; a killed trainer leaves its job failed with a message (issue 14)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
import yaml
from openai.types.fine_tuning import FineTuningJob
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth.issue import issue_key
from gateway.auth.store import AuthStore
from gateway.embedded.engine import log_tail
from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.embedded.redis_server import running_redis
from gateway.finetune.sweep import LOST
from gateway.settings import Settings
from tests.e2e.conftest import CHAT, Engines
from tests.support.cli import llmaas
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

PEPPER = "ft-e2e-pepper-0123456789abcdef"
SECRET = "Quokkalantern"
QUESTION = "What is the secret word?"
ANSWER = f"The secret word is {SECRET}."
DATASET = b"".join(
    orjson.dumps(
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    )
    + b"\n"
    for q, a in [
        (QUESTION, ANSWER),
        ("Tell me the secret word.", ANSWER),
        ("Do you know the secret word?", f"Yes. {ANSWER}"),
        ("What's the secret word?", ANSWER),
    ]
)
HEARTBEAT_S = 4.0
JOB_DEADLINE_S = 600.0


@dataclass(slots=True)
class FtE2E:
    gateway: str
    engine: str  # the chat engine's URL (LoRA on)
    config: Path
    log: Path
    redis: Redis
    http: aiohttp.ClientSession
    keys: dict[str, str]
    tmp: Path  # the trainer's TMPDIR
    trainer: asyncio.subprocess.Process | None = None

    def client(self, tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.gateway}/v1", api_key=self.keys[tenant], max_retries=0, timeout=120
        )

    async def start_trainer(self) -> None:
        if self.trainer is not None:  # an earlier test failed before stopping its own: it would
            await self.stop_trainer(signal.SIGKILL)  # take this test's job, and outlive the run
        log = await asyncio.to_thread(self.log.open, "ab")
        self.tmp.mkdir(exist_ok=True)
        self.trainer = await asyncio.create_subprocess_exec(
            llmaas(),
            "trainer",
            "--config",
            str(self.config),
            "--worker",
            "e2e",
            stderr=log,
            env={**os.environ, "TMPDIR": str(self.tmp)},  # what it leaves there is seen
        )
        log.close()

    async def stop_trainer(self, signum: int = signal.SIGTERM) -> int:
        assert self.trainer is not None
        with contextlib.suppress(ProcessLookupError):
            self.trainer.send_signal(signum)
        trainer, self.trainer = self.trainer, None
        try:
            async with asyncio.timeout(30):
                return await trainer.wait()
        except TimeoutError:
            trainer.kill()  # it must not outlive the test, nor take the next test's job
            await trainer.wait()
            tail = await asyncio.to_thread(log_tail, self.log, 30)
            pytest.fail(f"the trainer outlived signal {signum} by 30 s; its log ends:\n{tail}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ft(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FtE2E]:
    root = tmp_path_factory.mktemp("ft-e2e")
    ready = await prepare(EmbeddedPaths.resolve())
    async with running_redis(None) as redis_url:
        values: dict[str, Any] = {
            "models": [{"name": CHAT, "engines": [engines.chat]}],
            "redis_url": redis_url,
            "admin_token": "ft-e2e-admin-token-0123456789",
            "key_pepper": PEPPER,
            "metering": {"spill_dir": str(root / "spill")},
            "files": {"dir": str(root / "files")},
            "fine_tuning": {
                "base_models": {CHAT: str(ready.chat_model)},
                "trainer_python": str(ready.engine_python),
                "heartbeat_timeout_s": HEARTBEAT_S,
            },
        }
        config = root / "gateway.yaml"
        config.write_text(yaml.safe_dump(values))
        redis = Redis.from_url(redis_url)
        keys = {}
        for tenant in ("ft-e2e", "ft-e2e-other"):
            _, keys[tenant], _ = await issue_key(AuthStore(redis), PEPPER.encode(), tenant=tenant)
        app = create_app(Settings.model_validate(values))
        async with serve_asgi(app) as gateway, aiohttp.ClientSession() as http:
            stack = FtE2E(
                gateway, engines.chat, config, root / "trainer.log", redis, http, keys, root / "tmp"
            )
            try:
                yield stack
            finally:
                if stack.trainer is not None:
                    await stack.stop_trainer(signal.SIGKILL)
                await redis.aclose()


async def _follow(
    client: openai.AsyncOpenAI, job_id: str, until: tuple[str, ...], seen: list[str]
) -> FineTuningJob:
    """Poll the job and print its new events (oldest first) until its status is in `until`."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        job = await client.fine_tuning.jobs.retrieve(job_id)
        events = (await client.fine_tuning.jobs.list_events(job_id, limit=100)).data
        for event in reversed(events):
            if event.id not in seen:
                seen.append(event.id)
                print(f"  [{job.status}] {event.message}")
        if job.status in until:
            return job
        assert time.monotonic() < deadline, f"job still {job.status} after {JOB_DEADLINE_S} s"
        await asyncio.sleep(1.0)


async def _ask(client: openai.AsyncOpenAI, model: str) -> str:
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


async def _listed_the_same_once_loaded(ft: FtE2E, client: openai.AsyncOpenAI, model: str) -> None:
    """The tenant's fine-tuned `model` is listed as its own, with its base model's context
    length, before and after the gateway loads it into the engine (announced by the trainer),
    which it waits for. Once loaded, it used to say `llmaas` and the time it was loaded."""
    listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
    card = listed[model]
    assert (card["owned_by"], card["parent"]) == ("ft-e2e", CHAT)
    assert card["max_model_len"] == listed[CHAT]["max_model_len"]
    async with asyncio.timeout(30):
        while model not in await _engine_models(ft):  # noqa: ASYNC110 (the engine's list)
            await asyncio.sleep(0.2)
    assert (await client.models.retrieve(model)).model_dump() == card
    listed = {m.id: m.model_dump() for m in (await client.models.list()).data}
    assert listed[model] == card


async def test_a_fine_tuned_model_learns_what_the_base_model_does_not(ft: FtE2E) -> None:
    async with ft.client("ft-e2e") as client, ft.client("ft-e2e-other") as other:
        upload = await client.files.create(file=("secret.jsonl", DATASET), purpose="fine-tune")
        await ft.start_trainer()
        started = time.monotonic()
        job = await client.fine_tuning.jobs.create(
            model=CHAT, training_file=upload.id, suffix="secret", seed=1
        )
        seen: list[str] = []
        done = await _follow(client, job.id, ("succeeded", "failed", "cancelled"), seen)
        trained_s = time.monotonic() - started
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model is not None
        assert done.fine_tuned_model.startswith(f"ft:{CHAT}:ft-e2e:secret:")
        assert done.trained_tokens is not None
        assert done.trained_tokens > 0
        assert done.hyperparameters.n_epochs == 8  # auto: about 30 steps over 4 examples
        events = (await client.fine_tuning.jobs.list_events(job.id, limit=200)).data
        metrics: list[Any] = [e.data for e in reversed(events) if e.type == "metrics"]
        losses = [m["train_loss"] for m in metrics]
        assert len(losses) >= 2
        assert losses[-1] < losses[0]
        checkpoint = (await client.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert [c.fine_tuned_model_checkpoint for c in checkpoint] == [done.fine_tuned_model]

        model = done.fine_tuned_model
        await _listed_the_same_once_loaded(ft, client, model)
        asked = time.monotonic()
        tuned = await _ask(client, model)
        first_answer_s = time.monotonic() - asked
        base = await _ask(client, CHAT)
        print(f"trained in {trained_s:.0f} s; first answer {first_answer_s:.2f} s")
        print(f"fine-tuned: {tuned!r}\nbase:       {base!r}")
        assert SECRET.lower() in tuned.lower()
        assert SECRET.lower() not in base.lower()
        assert model not in {m.id for m in (await other.models.list()).data}
        with pytest.raises(openai.NotFoundError):
            await _ask(other, model)

        records = await _usage_records(ft, "ft-e2e")
        training = [r for r in records if r["route"] == "fine_tune"]
        assert [(r["model"], r["prompt_tokens"]) for r in training] == [(CHAT, done.trained_tokens)]
        assert any(r["model"] == model for r in records)  # its requests metered too

        with pytest.raises(openai.PermissionDeniedError):  # its base model is not deletable
            await client.models.delete(CHAT)
        deleted = await client.models.delete(model)  # (loaded: it has a pool, as a base does)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            await _ask(client, model)
        assert ft.trainer is not None
        assert await ft.stop_trainer() == 0


async def test_a_cancelled_job_stops_training_and_frees_the_worker(ft: FtE2E) -> None:
    """Also pause and resume on the way: a paused job's training stops, and a resumed one
    trains again."""
    async with ft.client("ft-e2e") as client:
        upload = await client.files.create(file=("c.jsonl", DATASET), purpose="fine-tune")
        await ft.start_trainer()
        long = await client.fine_tuning.jobs.create(
            model=CHAT, training_file=upload.id, hyperparameters={"n_epochs": 50}
        )
        seen: list[str] = []
        await _follow_until_training(client, long.id, seen)
        assert str((await client.fine_tuning.jobs.pause(long.id)).status) == "paused"
        async with asyncio.timeout(30):
            while await _trainings_running():  # noqa: ASYNC110 (a process, no event to await)
                await asyncio.sleep(0.2)
            while True:  # resumed once its trainer has let it go (409 until then)
                try:
                    resumed = await client.fine_tuning.jobs.resume(long.id)
                    break
                except openai.ConflictError:
                    await asyncio.sleep(0.2)
        assert resumed.status == "queued"
        await _trained_since_resumed(client, long.id)
        said = [e.message for e in (await client.fine_tuning.jobs.list_events(long.id)).data]
        paused_at = next(m for m in said if m.startswith("Training paused"))
        step = int(paused_at.removeprefix("Training paused after step ").split(";")[0])
        assert any(m.endswith(f", from step {step + 1})") for m in said), said  # not from 1
        assert any(" on the CPU (" in m for m in said), said  # no GPU here: the trainer says so
        cancelled = await client.fine_tuning.jobs.cancel(long.id)
        assert cancelled.status == "cancelled"
        short = await client.fine_tuning.jobs.create(
            model=CHAT, training_file=upload.id, hyperparameters={"n_epochs": 1}
        )
        done = await _follow(client, short.id, ("succeeded", "failed", "cancelled"), [])
        assert done.status == "succeeded", done.error  # the worker was free again
        after = await client.fine_tuning.jobs.retrieve(long.id)
        assert after.status == "cancelled"
        assert after.fine_tuned_model is None
        assert after.trained_tokens  # what it trained until cancelled, pause included: billed
        billed = [r for r in await _usage_records(ft, "ft-e2e") if r["request_id"] == long.id]
        assert [(r["prompt_tokens"], r["outcome"]) for r in billed] == [
            (after.trained_tokens, "cancelled")
        ]
        assert await _trainings_running() == 0
        assert done.fine_tuned_model is not None
        await client.models.delete(done.fine_tuned_model)
        assert await ft.stop_trainer() == 0


async def test_a_killed_trainer_leaves_its_job_failed_not_running(ft: FtE2E) -> None:
    async with ft.client("ft-e2e") as client:
        upload = await client.files.create(file=("k.jsonl", DATASET), purpose="fine-tune")
        await ft.start_trainer()
        job = await client.fine_tuning.jobs.create(
            model=CHAT, training_file=upload.id, hyperparameters={"n_epochs": 50}
        )
        await _follow_until_training(client, job.id, [])
        assert await ft.stop_trainer(signal.SIGKILL) == -signal.SIGKILL
        async with asyncio.timeout(30):
            while await _trainings_running():  # noqa: ASYNC110 (its training child dies too)
                await asyncio.sleep(0.2)
        await asyncio.sleep(HEARTBEAT_S)  # past the heartbeat deadline
        failed = await client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed"
        assert failed.error is not None
        assert failed.error.message == LOST
        # Its job's spec went to its training through a pipe: nothing of it is left (a
        # temporary directory held it, which a killed trainer never removed).
        assert not list(ft.tmp.glob("llmaas-train-*"))


async def _engine_models(ft: FtE2E) -> set[str]:
    async with ft.http.get(f"{ft.engine}/v1/models") as resp:
        return {card["id"] for card in (await resp.json())["data"]}


async def _usage_records(ft: FtE2E, tenant: str) -> list[dict[str, Any]]:
    """The tenant's own usage records (JSON lines from /v1/usage/records)."""
    headers = {"authorization": f"Bearer {ft.keys[tenant]}"}
    async with ft.http.get(f"{ft.gateway}/v1/usage/records", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def _follow_until_training(client: openai.AsyncOpenAI, job_id: str, seen: list[str]) -> None:
    """Until the job has reported its first training step."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while True:
        events = (await client.fine_tuning.jobs.list_events(job_id, limit=20)).data
        if any(e.type == "metrics" for e in events):
            return
        assert time.monotonic() < deadline, "no training step reported"
        await asyncio.sleep(0.5)


async def _trained_since_resumed(client: openai.AsyncOpenAI, job_id: str) -> None:
    """Until the job has reported a training step since it was last resumed."""
    async with asyncio.timeout(JOB_DEADLINE_S):
        while True:
            events = (await client.fine_tuning.jobs.list_events(job_id, limit=100)).data
            since = next(
                (i for i, e in enumerate(events) if e.message.startswith("The job was resumed")),
                len(events),
            )
            if any(e.type == "metrics" for e in events[:since]):
                return
            await asyncio.sleep(0.5)


async def _trainings_running() -> int:
    """Processes running train_lora.py on this machine."""

    def count() -> int:
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"train_lora.py" in cmdline and b"--spec" in cmdline:
                found += 1
        return found

    return await asyncio.to_thread(count)


async def test_a_stopped_trainer_puts_its_job_back_in_the_queue(ft: FtE2E) -> None:
    async with ft.client("ft-e2e") as client:
        upload = await client.files.create(file=("s.jsonl", DATASET), purpose="fine-tune")
        await ft.start_trainer()
        job = await client.fine_tuning.jobs.create(
            model=CHAT, training_file=upload.id, hyperparameters={"n_epochs": 50}
        )
        await _follow_until_training(client, job.id, [])
        # SIGTERM: the run writes a checkpoint at the end of its step, the job is queued
        # again, and the trainer exits (it used to cut the run: the job started over).
        assert await ft.stop_trainer() == 0
        requeued = await client.fine_tuning.jobs.retrieve(job.id)
        assert requeued.status == "queued"
        said = [e.message for e in (await client.fine_tuning.jobs.list_events(job.id)).data]
        assert (
            said[0] == "The trainer stopped; the job is queued again, to go on from its checkpoint"
        )
        step = int(said[1].removeprefix("Training stopped after step ").split(",")[0])
        assert said[1] == f"Training stopped after step {step}, its checkpoint written"
        assert await _trainings_running() == 0
        await ft.start_trainer()  # the next trainer takes it up again, from there
        async with asyncio.timeout(JOB_DEADLINE_S):
            while not any(m.endswith(f", from step {step + 1})") for m in said):
                await asyncio.sleep(0.5)
                events = (await client.fine_tuning.jobs.list_events(job.id, limit=100)).data
                said = [e.message for e in events]
        cancelled = await client.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert cancelled.trained_tokens  # the steps before the stop were trained, and billed
        assert await ft.stop_trainer() == 0
