"""The Fine-tuning API through the real `openai` client against a real Redis: jobs created,
listed, cancelled and limited per tenant, their events, bad input refused with the field named,
a job whose trainer vanished failed (not left running), and fine-tuned models visible to their
own tenant only (issue 14). Training itself: tests/e2e/test_fine_tuning_e2e.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.files.storage import DirectoryStorage
from gateway.finetune.job_store import PENDING, QUEUE, RUNNING, JobStore
from gateway.finetune.jobs import Job
from gateway.finetune.names import fine_tuned_name
from gateway.finetune.sweep import LOST, fail_overdue
from gateway.finetune.trainer import Trainer, failed_training
from gateway.settings import Settings
from tests.integration.finetune_stack import (
    BASE,
    DATASET,
    MAX_ACTIVE,
    finetune_stack,
    ft_fixture,
    upload_dataset,
)
from tests.integration.tenant_stack import TenantStack
from tests.support.cli import run_cli
from tests.support.redis_control import TRANSACTION

pytestmark = pytest.mark.asyncio(loop_scope="session")


ft = ft_fixture("ft", max_lora_rank=16)


async def test_a_job_is_created_queued_and_listed_with_its_events(ft: TenantStack) -> None:
    client = await ft.tenant("ft-create")
    file_id = await upload_dataset(client)
    job = await client.fine_tuning.jobs.create(
        model=BASE,
        training_file=file_id,
        suffix="demo",
        hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 2.0},
        seed=7,
        metadata={"team": "search"},
    )
    assert job.id.startswith("ftjob-")
    assert (job.status, job.model, job.training_file, job.seed) == ("queued", BASE, file_id, 7)
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size == "auto"
    assert job.organization_id == "ft-create"
    assert job.fine_tuned_model is None
    assert job.metadata == {"team": "search"}
    assert (await client.fine_tuning.jobs.retrieve(job.id)).model_dump() == job.model_dump()
    assert [j.id for j in (await client.fine_tuning.jobs.list()).data] == [job.id]
    events = (await client.fine_tuning.jobs.list_events(job.id)).data
    assert [e.message.split(":")[0] for e in events] == [
        "Validated the training file (4 examples); the job is queued",
        "Created fine-tuning job",
    ]
    assert events[0].id != events[1].id
    # a message's data is an object, as the spec types it (it was null: review7)
    assert [(e.type, e.data) for e in events] == [("message", {}), ("message", {})]
    older = await client.fine_tuning.jobs.list_events(job.id, after=events[0].id, limit=5)
    assert [e.id for e in older.data] == [events[1].id]
    assert f"ft-create/{job.id}".encode() in await ft.redis.lrange(QUEUE, 0, -1)
    cancelled = await client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError) as again:
        await client.fine_tuning.jobs.cancel(job.id)
    assert _error(again.value)["code"] == "job_not_active"
    checkpoints = await client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data == []
    for query, param in (({"limit": 0}, "limit"), ({"after": "ftckpt-none"}, "after")):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.fine_tuning.jobs.checkpoints.list(job.id, **query)
        assert _error(refused.value)["param"] == param  # were ignored (200)


async def test_a_suffix_of_up_to_64_characters_is_taken(ft: TenantStack) -> None:
    client = await ft.tenant("ft-suffix")
    suffix = "a-long_suffix-" + "x" * 50  # 64 characters, as OpenAI's API takes
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client), suffix=suffix
    )
    assert job.model_dump()["user_provided_suffix"] == suffix  # (not in the SDK's type)
    await client.fine_tuning.jobs.cancel(job.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-" + "0" * 24}, "training_file"),
        ({"training_file": "batch-file"}, "training_file"),
        ({"validation_file": "file-" + "0" * 24}, "validation_file"),
        ({"suffix": "has spaces"}, "suffix"),
        ({"suffix": "s" * 65}, "suffix"),  # OpenAI's limit is 64
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"lora_rank": 64}}, "hyperparameters.lora_rank"),
        (  # where README tells to give it: named there (it said hyperparameters.lora_rank)
            {
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"lora_rank": 64}},
                }
            },
            "method.supervised.hyperparameters.lora_rank",
        ),
        ({"method": {"type": "dpo"}}, "method.type"),
        (
            {
                "hyperparameters": {"n_epochs": 3},
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 2}},
                },
            },
            "method.supervised.hyperparameters.n_epochs",
        ),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),  # OpenAI's keys: 64 characters at most
    ],
)
async def test_bad_job_requests_name_the_field(
    ft: TenantStack, fields: dict[str, Any], param: str
) -> None:
    client = await ft.tenant("ft-bad")
    body: dict[str, Any] = {"model": BASE, "training_file": await upload_dataset(client)}
    if fields.get("training_file") == "batch-file":
        batch = await client.files.create(file=("b.jsonl", DATASET), purpose="batch")
        fields = {"training_file": batch.id}
    body.update(fields)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/fine_tuning/jobs", body=body, cast_to=object)
    error = _error(refused.value)
    assert error["param"] == param, error
    for pydantics in ("Value error, ", "Input should be None", "at most 0 items"):  # its words
        assert pydantics not in error["message"]
    if param in ("validation_file", "integrations"):
        assert "supported here; leave it out" in error["message"]
    assert (await client.fine_tuning.jobs.list()).data == []


async def test_jobs_are_listed_by_their_metadata(ft: TenantStack) -> None:
    """OpenAI's `metadata[k]=v` filter (it used to be ignored: every job was listed)."""
    client = await ft.tenant("ft-meta")
    file_id = await upload_dataset(client)
    made = []
    for metadata in ({"team": "qa", "run": "1"}, {"team": "x"}, None, {"team": "qa"}):
        job = await client.fine_tuning.jobs.create(
            model=BASE, training_file=file_id, metadata=metadata
        )
        await client.fine_tuning.jobs.cancel(job.id)  # (at most 2 active per tenant)
        made.append(job.id)
    listed = [j.id for j in (await client.fine_tuning.jobs.list()).data]
    assert listed == made[::-1]  # newest first, within one second too (it was by id there)
    tagged = [made[3], made[0]]
    qa = await client.fine_tuning.jobs.list(metadata={"team": "qa"})
    assert [j.id for j in qa.data] == tagged
    both = await client.fine_tuning.jobs.list(metadata={"team": "qa", "run": "1"})
    assert [j.id for j in both.data] == [made[0]]
    first = await client.fine_tuning.jobs.list(metadata={"team": "qa"}, limit=1)
    assert ([j.id for j in first.data], first.has_more) == (tagged[:1], True)
    rest = await client.fine_tuning.jobs.list(metadata={"team": "qa"}, after=tagged[0])
    assert ([j.id for j in rest.data], rest.has_more) == (tagged[1:], False)
    bare = await client.get(
        "/fine_tuning/jobs", options={"params": {"metadata": "null"}}, cast_to=object
    )
    assert [j["id"] for j in bare["data"]] == [made[2]]  # type: ignore[index]
    for params, param in (  # a typo in a filter listed every job
        ({"metadata[team": "qa"}, "metadata[team"),
        ({"metadata": "team"}, "metadata"),
        ({"metadata[]": "qa"}, "metadata[]"),
    ):
        with pytest.raises(openai.BadRequestError) as typo:
            await client.get("/fine_tuning/jobs", options={"params": params}, cast_to=object)
        assert typo.value.body["param"] == param, typo.value.body  # type: ignore[index]
    key = {"authorization": f"Bearer {await ft.key('ft-meta')}"}
    url = f"{ft.gateway}/v1/fine_tuning/jobs?limit=1&limit=2"  # which counted was FastAPI's pick
    async with ft.http.get(url, headers=key) as resp:
        error = (await resp.json())["error"]
        assert (resp.status, error["param"], error["code"]) == (400, "limit", "duplicate_parameter")
    as_list = f"{ft.gateway}/v1/fine_tuning/jobs?limit=1&x[]=a&x[]=b"  # a list, item by item
    async with ft.http.get(as_list, headers=key) as resp:
        assert resp.status == 200


async def test_events_after_another_jobs_event_are_refused(ft: TenantStack) -> None:
    """`after` names one of this job's events; another job's event id used to be read as a
    position in this job's list (its number), answering with events it was never after."""
    client = await ft.tenant("ft-after")
    file_id = await upload_dataset(client)
    first = await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    second = await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    theirs = (await client.fine_tuning.jobs.list_events(first.id)).data
    mine = (await client.fine_tuning.jobs.list_events(second.id)).data
    assert len(theirs) == len(mine) == 2
    older = await client.fine_tuning.jobs.list_events(second.id, after=mine[0].id)
    assert [e.id for e in older.data] == [mine[1].id]
    for after in (theirs[0].id, mine[0].id + "0", "ftevent-1"):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.fine_tuning.jobs.list_events(second.id, after=after)
        assert (_error(refused.value)["param"], _error(refused.value)["code"]) == (
            "after",
            "invalid_value",
        )
    for job in (first, second):
        await client.fine_tuning.jobs.cancel(job.id)


async def test_a_missing_or_mistyped_field_has_the_codes_of_the_inference_routes(
    ft: TenantStack,
) -> None:
    """Routes whose bodies FastAPI validates answer as chat does (body.py): a missing field is
    `missing_required_parameter`, a value of the wrong type `invalid_type`."""
    headers = {"authorization": f"Bearer {await ft.key('ft-codes')}"}
    jobs = f"{ft.gateway}/v1/fine_tuning/jobs"
    cases = (
        ("POST", jobs, {"training_file": "file-x"}, "model", "missing_required_parameter"),
        ("POST", jobs, {"model": 7, "training_file": "file-x"}, "model", "invalid_type"),
        ("GET", f"{jobs}?limit=abc", None, "limit", "invalid_type"),
        ("GET", f"{ft.gateway}/v1/files?limit=abc", None, "limit", "invalid_type"),
    )
    for method, url, body, param, code in cases:
        async with ft.http.request(method, url, json=body, headers=headers) as resp:
            error = (await resp.json())["error"]
            assert (resp.status, error["param"], error["code"]) == (400, param, code), error
            if code == "missing_required_parameter":
                assert error["message"] == f"Missing required parameter: '{param}'."


async def test_a_page_after_an_unknown_job_is_refused_naming_the_cursor(ft: TenantStack) -> None:
    client = await ft.tenant("ft-cursor")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.fine_tuning.jobs.list(after="ftjob-" + "0" * 24)
    assert _error(refused.value)["param"] == "after"
    assert _error(refused.value)["message"] == (
        "Invalid 'after': no job 'ftjob-000000000000000000000000' in this listing."
    )


async def test_a_page_may_be_larger_than_100(ft: TenantStack) -> None:
    """OpenAI sets no largest `limit` for jobs; 101 used to be a 400."""
    client = await ft.tenant("ft-limit")
    page = await client.fine_tuning.jobs.list(limit=500)
    assert (page.data, page.has_more) == ([], False)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.fine_tuning.jobs.list(limit=10_001)
    assert _error(refused.value)["param"] == "limit"


async def test_another_tenant_sees_nothing(ft: TenantStack) -> None:
    owner = await ft.tenant("ft-owner")
    other = await ft.tenant("ft-other")
    job = await owner.fine_tuning.jobs.create(model=BASE, training_file=await upload_dataset(owner))
    for attempt in (
        other.fine_tuning.jobs.retrieve(job.id),
        other.fine_tuning.jobs.cancel(job.id),
        other.fine_tuning.jobs.list_events(job.id),
        other.fine_tuning.jobs.checkpoints.list(job.id),
        owner.fine_tuning.jobs.retrieve("ftjob-nope"),  # no job can have that id: as unknown
    ):
        with pytest.raises(openai.NotFoundError) as unknown:
            await attempt
        assert unknown.value.code == "job_not_found"
    assert (await other.fine_tuning.jobs.list()).data == []
    with pytest.raises(openai.BadRequestError) as borrowed:  # the owner's file is not theirs
        await other.fine_tuning.jobs.create(model=BASE, training_file=job.training_file)
    assert _error(borrowed.value)["param"] == "training_file"
    assert (await owner.fine_tuning.jobs.retrieve(job.id)).status == "queued"
    await owner.fine_tuning.jobs.cancel(job.id)


async def test_active_jobs_are_limited_per_tenant(ft: TenantStack) -> None:
    client = await ft.tenant("ft-limit")
    file_id = await upload_dataset(client)
    jobs = [
        await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
        for _ in range(MAX_ACTIVE)
    ]
    await client.fine_tuning.jobs.pause(jobs[0].id)  # a paused job is one of them
    with pytest.raises(openai.RateLimitError) as refused:
        await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    assert _error(refused.value)["code"] == "too_many_active_jobs"
    assert "(a paused job does not finish by itself)" in _error(refused.value)["message"]
    # no retry makes room: the SDK must not send it again (an upload: the whole file again)
    assert refused.value.response.headers["x-should-retry"] == "false"
    other = await ft.tenant("ft-limit-other")  # another tenant is not affected
    await other.fine_tuning.jobs.cancel(
        (
            await other.fine_tuning.jobs.create(
                model=BASE, training_file=await upload_dataset(other)
            )
        ).id
    )
    await client.fine_tuning.jobs.cancel(jobs[0].id)
    freed = await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    for job in (jobs[1], freed):
        await client.fine_tuning.jobs.cancel(job.id)


async def test_a_training_file_is_not_deleted_under_its_active_job(ft: TenantStack) -> None:
    """Deleting a queued or running job's file would fail it when its trainer reads it: 409
    naming the job, until the job ends; then the file deletes as any other."""
    client = await ft.tenant("ft-file-in-use")
    file_id = await upload_dataset(client)
    job = await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    with pytest.raises(openai.ConflictError) as refused:
        await client.files.delete(file_id)
    error = _error(refused.value)
    assert (error["code"], error["param"]) == ("file_in_use", "id")
    assert refused.value.response.headers["x-should-retry"] == "false"  # SDKs tried it 3 times
    assert job.id in error["message"]
    assert "queued" in error["message"]
    assert (await client.files.retrieve(file_id)).id == file_id  # kept
    await client.fine_tuning.jobs.cancel(job.id)
    assert (await client.files.delete(file_id)).deleted


async def test_a_job_created_as_its_file_is_deleted_leaves_one_winner(ft: TenantStack) -> None:
    """Sent at the same moment, the job's creation and the file's delete never both succeed
    (which left a queued job on a file that is gone): the job wins and the delete is a 409,
    or the delete wins and the creation is a 400 naming the file."""
    client = await ft.tenant("ft-race")
    outcomes: set[str] = set()
    for _ in range(20):
        file_id = await upload_dataset(client)
        job, deleted = await asyncio.gather(
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id),
            client.files.delete(file_id),
            return_exceptions=True,
        )
        if isinstance(job, BaseException):
            assert isinstance(job, openai.BadRequestError), job
            assert (job.code, job.param) == ("file_not_found", "training_file")
            assert not isinstance(deleted, BaseException)
            outcomes.add("delete won")
        else:
            assert isinstance(deleted, openai.ConflictError), deleted
            assert deleted.code == "file_in_use"
            assert (await client.files.retrieve(file_id)).id == file_id
            await client.fine_tuning.jobs.cancel(job.id)
            await client.files.delete(file_id)
            outcomes.add("job won")
    assert outcomes  # (which wins depends on the timing; neither may lose both ways)


async def test_a_job_whose_file_vanished_fails_saying_so_without_a_path(ft: TenantStack) -> None:
    """The file went between the job's creation and its training (a race the API's 409 cannot
    close): the job fails naming the file, with no path of the shared volume in the message."""
    client = await ft.tenant("ft-file-gone")
    file_id = await upload_dataset(client)
    job = await client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    (ft.root / "files" / "ft-file-gone" / file_id).unlink()
    settings = Settings.model_validate(
        {
            "dev_mode": True,  # (the trainer needs no secrets here)
            "files": {"dir": str(ft.root / "files")},
            "fine_tuning": {"base_models": {BASE: str(ft.root / "weights")}},
        }
    )
    ended = await Trainer(settings, ft.redis, worker="test:1").run_job("ft-file-gone", job.id)
    assert ended is not None
    assert ended.error is not None
    assert ended.status == "failed"
    assert ended.error.message == f"The training file {file_id} no longer exists."
    assert ended.error.param == "training_file"
    assert str(ft.root) not in (await client.fine_tuning.jobs.retrieve(job.id)).model_dump_json()


async def _claimed(ft: TenantStack, tenant: str) -> tuple[openai.AsyncOpenAI, JobStore, Job]:
    """A new job of `tenant`, claimed by a trainer that is alive (its heartbeat ahead) but
    never trains it: the job as it stands (running)."""
    client = await ft.tenant(tenant)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    store = JobStore(ft.redis)
    running = await store.transition(
        tenant, job.id, ("queued",), {"status": "running", "worker": "elsewhere:1"}
    )
    assert running is not None
    await store.heartbeat(running, int(time.time() * 1000) + 60_000)
    return client, store, running


async def test_a_job_whose_creation_stopped_before_its_queue_entry_is_queued_by_a_trainer(
    ft: TenantStack,
) -> None:
    """A job is stored under its tenant's hash tag and queued in the shared queue, two steps:
    a gateway dying between them left a queued job no trainer ever took, holding one of the
    tenant's active slots. A trainer's loop queues it once its grace has passed."""
    client = await ft.tenant("ft-stranded")
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    member = f"ft-stranded/{job.id}"
    assert await ft.redis.zscore(PENDING, member) is None  # done: nothing left pending
    # The state a gateway dying between the two steps leaves: stored, pending, not queued.
    await ft.redis.lrem(QUEUE, 0, member)
    now_ms = int(time.time() * 1000)
    await ft.redis.zadd(PENDING, {member: now_ms + 60_000, "ft-stranded/ftjob-never": now_ms})
    settings = Settings.model_validate(
        {
            "dev_mode": True,
            "files": {"dir": str(ft.root / "files")},
            "fine_tuning": {"base_models": {BASE: str(ft.root / "weights")}},
        }
    )
    trainer = Trainer(settings, ft.redis, worker="sweeper:1")

    async def one_look(timeout_s: float) -> tuple[str, str] | None:
        trainer.stopping.set()  # one turn of the loop, taking nothing
        return None

    trainer.store.next_queued = one_look  # type: ignore[method-assign]
    await trainer.run()  # within its grace: left to the gateway creating it
    assert await ft.redis.lpos(QUEUE, member) is None
    assert await ft.redis.zscore(PENDING, "ft-stranded/ftjob-never") is None  # never stored
    await ft.redis.zadd(PENDING, {member: now_ms - 1})  # the grace has passed
    trainer.stopping.clear()
    await trainer.run()
    assert await ft.redis.lpos(QUEUE, member) is not None
    assert await ft.redis.zscore(PENDING, member) is None
    assert (await client.fine_tuning.jobs.retrieve(job.id)).status == "queued"
    await client.fine_tuning.jobs.cancel(job.id)


async def test_a_job_stored_whose_queueing_failed_is_created_not_refused(
    ft: TenantStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing between storing a job and queuing it answered 503, which the SDK retries:
    two jobs, both trained (the first queued by the sweep). It is created; the sweep queues it."""
    client = await ft.tenant("ft-enqueue-failed")

    async def fails(self: JobStore, job: Job) -> bool:
        raise RedisConnectionError("connection lost")

    monkeypatch.setattr(JobStore, "enqueue", fails)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    monkeypatch.undo()
    assert job.status == "queued"
    assert [j.id for j in (await client.fine_tuning.jobs.list()).data] == [job.id]
    member = f"ft-enqueue-failed/{job.id}"
    assert await ft.redis.lpos(QUEUE, member) is None
    assert await ft.redis.zscore(PENDING, member) is not None  # left to the sweep
    assert await JobStore(ft.redis).queue_stranded(int(time.time() * 1000) + 120_000) >= 1
    assert await ft.redis.lpos(QUEUE, member) is not None
    await client.fine_tuning.jobs.cancel(job.id)


async def test_a_trainer_that_loses_the_claim_leaves_the_winners_heartbeat(
    ft: TenantStack,
) -> None:
    """A job queued twice (paused and resumed while queued) read as queued by two trainers:
    the one whose claim failed removed the heartbeat the job's name shares with the winner's,
    and the next look at the job failed it as lost while it trained."""
    client = await ft.tenant("ft-claim-race")
    created = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    store = JobStore(ft.redis)
    as_read = await store.get("ft-claim-race", created.id)  # what the loser read: queued
    assert as_read is not None
    assert as_read.status == "queued"
    running = await store.transition(  # the winner's claim, with its heartbeat
        "ft-claim-race", created.id, ("queued",), {"status": "running", "worker": "winner:1"}
    )
    assert running is not None
    await store.heartbeat(running, int(time.time() * 1000) + 60_000)
    settings = Settings.model_validate(
        {
            "dev_mode": True,  # (the trainer needs no secrets here)
            "files": {"dir": str(ft.root / "files")},
            "fine_tuning": {"base_models": {BASE: str(ft.root / "weights")}},
        }
    )
    loser = Trainer(settings, ft.redis, worker="loser:1")

    async def read_before_the_claim(tenant: str, job_id: str) -> Job | None:
        return as_read

    loser.store.get = read_before_the_claim  # type: ignore[method-assign]
    assert await loser.run_job("ft-claim-race", created.id) is None
    assert await store.trained_now("ft-claim-race", created.id)
    assert (await client.fine_tuning.jobs.retrieve(created.id)).status == "running"
    await client.fine_tuning.jobs.cancel(created.id)
    await ft.redis.zrem(RUNNING, f"ft-claim-race/{created.id}")


@pytest.mark.parametrize("found_by", ["the API", "a trainer"])
async def test_a_running_job_whose_trainer_vanished_is_failed(
    ft: TenantStack, tmp_path: Path, found_by: str
) -> None:
    """Failed, billed nothing, and the checkpoint an earlier pause or stop left it is removed
    (it stayed on the files volume for good, and the job said what that run had trained)."""
    tenant = f"ft-lost-{found_by.rsplit(maxsplit=1)[-1]}"
    client, store, running = await _claimed(ft, tenant)
    job = await store.transition(tenant, running.id, ("running",), {"trained_tokens": 60})
    assert job is not None
    kept = ft.root / "files" / tenant / f"{job.id}.checkpoint"
    kept.mkdir(parents=True)
    assert (await client.fine_tuning.jobs.retrieve(job.id)).status == "running"  # alive
    await store.heartbeat(running, int(time.time() * 1000) - 1)  # its deadline passed
    if found_by == "a trainer":  # its loop sweeps the overdue before it takes a job
        await fail_overdue(store, DirectoryStorage(ft.root / "files"))
    failed = await client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("trainer_lost", LOST)
    assert failed.trained_tokens is None
    assert not kept.exists()
    events = (await client.fine_tuning.jobs.list_events(job.id)).data
    assert (events[0].level, events[0].message) == ("error", LOST)
    await ft.redis.zrem(RUNNING, f"{tenant}/{job.id}")
    second = await client.fine_tuning.jobs.create(  # the failed job no longer counts
        model=BASE, training_file=job.training_file
    )
    await client.fine_tuning.jobs.cancel(second.id)


def _sleeping_trainer(ft: TenantStack, tmp_path: Path) -> tuple[Trainer, Path]:
    """A trainer whose training child sleeps (writing its pid first): a job it runs stays
    running until something stops it."""
    child = tmp_path / "sleeping-python"
    child.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 60\n")
    child.chmod(0o755)
    settings = Settings.model_validate(
        {
            "dev_mode": True,
            "files": {"dir": str(ft.root / "files")},
            "fine_tuning": {
                "base_models": {BASE: str(ft.root / "weights")},
                "trainer_python": str(child),
            },
        }
    )
    return Trainer(settings, ft.redis, worker="test:pause"), tmp_path / "pid"


async def _status_becomes(client: openai.AsyncOpenAI, job_id: str, status: str) -> None:
    async with asyncio.timeout(10):
        while (await client.fine_tuning.jobs.retrieve(job_id)).status != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # (the job's record in Redis: no event to await)


async def test_a_job_is_paused_and_resumed(ft: TenantStack, tmp_path: Path) -> None:
    """Pause takes a queued or running job to `paused` (a running one's training stops, its
    trainer moves on); resume queues it again; a paused job can still be cancelled."""
    client = await ft.tenant("ft-pause")
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    trainer, pid_file = _sleeping_trainer(ft, tmp_path)
    paused = await client.fine_tuning.jobs.pause(job.id)
    assert str(paused.status) == "paused"  # (not in the SDK's statuses yet)
    with pytest.raises(openai.BadRequestError) as again:
        await client.fine_tuning.jobs.pause(job.id)
    assert _error(again.value)["code"] == "invalid_job_status"
    assert "The job is paused; only a queued or running job can be paused." in str(again.value)
    assert await trainer.run_job("ft-pause", job.id) is None  # its queue entry is passed over
    resumed = await client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    assert f"ft-pause/{job.id}".encode() in await ft.redis.lrange(QUEUE, 0, -1)

    training = asyncio.create_task(trainer.run_job("ft-pause", job.id))
    await _status_becomes(client, job.id, "running")
    async with asyncio.timeout(10):
        while not pid_file.exists():  # noqa: ASYNC110 (a file, no event to await)
            await asyncio.sleep(0.05)
    assert str((await client.fine_tuning.jobs.pause(job.id)).status) == "paused"
    ended = await asyncio.wait_for(training, 10)  # the trainer stopped it and is free
    assert ended is not None
    assert ended.status == "paused"
    with pytest.raises(ProcessLookupError):  # the training child is gone
        os.kill(int(pid_file.read_text()), 0)
    assert (await client.fine_tuning.jobs.resume(job.id)).status == "queued"
    assert str((await client.fine_tuning.jobs.pause(job.id)).status) == "paused"
    messages = [e.message for e in (await client.fine_tuning.jobs.list_events(job.id)).data]
    assert messages[:2] == [
        "The job was paused",
        "The job was resumed and queued",
    ]
    assert "Fine-tuning job started" in messages
    assert not any("test:pause" in m for m in messages)  # its trainer (a pod's name): not theirs
    kept = ft.root / "files" / "ft-pause" / f"{job.id}.checkpoint"  # as a paused run leaves it
    kept.mkdir()
    (kept / "checkpoint.pt").write_bytes(b"weights")
    assert (await client.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    assert not kept.exists()  # no trainer holds a paused job: the API removed it
    with pytest.raises(openai.BadRequestError) as late:
        await client.fine_tuning.jobs.resume(job.id)
    assert _error(late.value)["message"] == (
        "The job is cancelled; only a paused job can be resumed."
    )


async def test_a_job_paused_as_its_training_ends_succeeds(ft: TenantStack, tmp_path: Path) -> None:
    """The pause came after the last step: the run ends with its adapter (the child never
    acts on the signal), and the job succeeds rather than staying paused with its work lost."""
    client = await ft.tenant("ft-late-pause")
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w" * 5000)
    counted = "llmaas:{t:ft-late-pause}:files:bytes"
    before = int(await ft.redis.get(counted) or 0)  # its training file
    child = tmp_path / "finishing-python"
    done = {"type": "done", "trained_tokens": 12, "adapter_dir": str(adapter)}
    child.write_text(
        f"#!/bin/sh\ntrap '' USR1\nwhile [ ! -f {tmp_path / 'go'} ]; do sleep 0.05; done\n"
        f"echo '{json.dumps(done)}'\n"
    )
    child.chmod(0o755)
    trainer, _ = _sleeping_trainer(ft, tmp_path)
    trainer.settings.fine_tuning.trainer_python = child
    training = asyncio.create_task(trainer.run_job("ft-late-pause", job.id))
    await _status_becomes(client, job.id, "running")
    await client.fine_tuning.jobs.pause(job.id)
    (tmp_path / "go").touch()  # the last step ends now
    ended = await asyncio.wait_for(training, 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("succeeded", 12)
    retrieved = await client.fine_tuning.jobs.retrieve(job.id)
    assert retrieved.status == "succeeded"
    assert retrieved.fine_tuned_model is not None
    assert adapter.exists()  # kept: the model is served from it
    # On the volume every tenant shares: counted in the tenant's bytes with its files (the
    # models were not: fine-tuning grew a tenant's share without bound), until deleted.
    assert int(await ft.redis.get(counted) or 0) == before + 5000
    most = 10 * 1024**3  # files.max_bytes_per_tenant
    await ft.redis.set(counted, most)  # as a tenant whose files and models fill its share
    with pytest.raises(openai.RateLimitError) as full:
        await client.fine_tuning.jobs.create(model=BASE, training_file=job.training_file)
    assert full.value.code == "too_many_file_bytes"
    await ft.redis.set(counted, before + 5000)
    await client.models.delete(retrieved.fine_tuned_model)
    assert int(await ft.redis.get(counted) or 0) == before


async def test_a_run_that_prints_nothing_for_the_stall_timeout_is_stopped(
    ft: TenantStack, tmp_path: Path
) -> None:
    """A hung run (no line for `fine_tuning.stall_timeout_s`) is stopped and its job failed,
    saying so, and the worker is free; a run whose lines keep coming is not, however long."""
    client = await ft.tenant("ft-stall")
    trainer, pid_file = _sleeping_trainer(ft, tmp_path)
    trainer.settings.fine_tuning.stall_timeout_s = 1.0
    hung = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    ended = await asyncio.wait_for(trainer.run_job("ft-stall", hung.id), 10)
    assert ended is not None
    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error.message == "Training failed: no progress for 1 s; the run was stopped"
    with pytest.raises(ProcessLookupError):  # the training child is gone
        os.kill(int(pid_file.read_text()), 0)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    steps = [
        {"type": "step", "step": n, "steps": 8, "loss": 0.5, "tokens": 2 * n} for n in range(1, 9)
    ]
    done = {"type": "done", "trained_tokens": 16, "adapter_dir": str(adapter)}
    steady = tmp_path / "steady-python"  # 1.6 s in all, a line every 0.2 s
    steady.write_text(
        "#!/bin/sh\n"
        + "".join(f"sleep 0.2\necho '{json.dumps(step)}'\n" for step in steps)
        + f"echo '{json.dumps(done)}'\n"
    )
    steady.chmod(0o755)
    trainer.settings.fine_tuning.trainer_python = steady
    slow = await client.fine_tuning.jobs.create(model=BASE, training_file=hung.training_file)
    ended = await asyncio.wait_for(trainer.run_job("ft-stall", slow.id), 10)
    assert ended is not None
    assert (ended.status, ended.trained_tokens) == ("succeeded", 16)


async def test_a_queued_job_paused_and_resumed_is_queued_once(ft: TenantStack) -> None:
    """Its entry stays in the queue while it is paused: resumed, it is not put there twice
    (two trainers would both read it queued, and one lose its claim)."""
    client = await ft.tenant("ft-requeue")
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    for _ in range(2):
        assert str((await client.fine_tuning.jobs.pause(job.id)).status) == "paused"
        assert (await client.fine_tuning.jobs.resume(job.id)).status == "queued"
    entries = await ft.redis.lrange(QUEUE, 0, -1)
    assert entries.count(f"ft-requeue/{job.id}".encode()) == 1
    await client.fine_tuning.jobs.cancel(job.id)


async def test_a_job_is_not_resumed_while_its_training_stops(ft: TenantStack) -> None:
    """Paused while running, a job is held by its trainer until that has let it go (stopped
    the child, removed what it wrote): resuming before is a 409 to retry."""
    client, store, running = await _claimed(ft, "ft-stopping")
    job = running
    await client.fine_tuning.jobs.pause(job.id)
    with pytest.raises(openai.ConflictError) as stopping:
        await client.fine_tuning.jobs.resume(job.id)
    assert _error(stopping.value)["code"] == "job_stopping"
    await store.done(running)  # the trainer let go
    assert (await client.fine_tuning.jobs.resume(job.id)).status == "queued"
    await client.fine_tuning.jobs.cancel(job.id)


async def test_the_model_list_is_served_while_redis_cannot_be_read(ft: TenantStack) -> None:
    """Found by review: GET /v1/models read the tenant's fine-tuned models from Redis and was
    a 503 store_unavailable while the same key's chat requests were served (clients list
    models before they chat). The served models are listed; fine-tuned ones come back after."""
    client = await ft.tenant("ft-models-outage")
    await ft.cache_key(client, "ft-models-outage")
    name = fine_tuned_name(BASE, "ft-models-outage", "demo", "ftjob-" + "b" * 24)
    await JobStore(ft.redis).put_model("ft-models-outage", name, {"base": BASE, "created": 1})
    served = {m.id for m in (await client.models.list()).data}
    assert {BASE, name} <= served
    await ft.redis.client_pause(2000)  # Redis takes no command for 2 s
    try:
        listed = await client.with_options(max_retries=0).models.list()
    finally:
        await ft.redis.client_unpause()
    assert {m.id for m in listed.data} == served - {name}
    assert {m.id for m in (await client.models.list()).data} == served


async def test_fine_tuned_models_belong_to_their_tenant(ft: TenantStack, tmp_path: Path) -> None:
    owner = await ft.tenant("ft-models")
    other = await ft.tenant("ft-models-other")
    name = fine_tuned_name(BASE, "ft-models", "demo", "ftjob-" + "a" * 24)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    await JobStore(ft.redis).put_model(
        "ft-models", name, {"base": BASE, "adapter": str(adapter), "job": "x", "created": 1}
    )
    mine = {m.id: m.model_dump() for m in (await owner.models.list()).data}
    assert (mine[name]["owned_by"], mine[name]["created"], mine[name]["parent"]) == (
        "ft-models",
        1,
        BASE,
    )
    assert mine[name].get("max_model_len") == mine[BASE].get("max_model_len")  # its base's
    assert name not in {m.id for m in (await other.models.list()).data}
    assert (await owner.models.retrieve(name)).model_dump() == mine[name]
    with pytest.raises(openai.InternalServerError) as unloadable:  # the simulator serves no LoRA
        await owner.with_options(max_retries=0).chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}]
        )
    assert (unloadable.value.status_code, unloadable.value.code) == (503, "model_unavailable")
    assert unloadable.value.response.headers["retry-after"] == "1"
    for attempt in (
        other.models.retrieve(name),
        other.models.delete(name),
        other.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}]),
    ):
        with pytest.raises(openai.NotFoundError):
            await attempt
    with pytest.raises(openai.PermissionDeniedError) as refused:  # only fine-tuned ones can be
        await owner.models.delete(BASE)
    assert (refused.value.code, refused.value.param) == ("model_not_deletable", "model")
    assert "base model" in refused.value.message
    deleted = await owner.models.delete(name)
    assert (deleted.id, deleted.deleted) == (name, True)
    assert not adapter.exists()
    assert name not in {m.id for m in (await owner.models.list()).data}


async def test_a_key_allowed_the_base_model_uses_its_tenants_fine_tuned_model(
    ft: TenantStack, tmp_path: Path
) -> None:
    """The model's name exists only once its job ends: a key whose allow-list names the base
    model (and so could fine-tune it) sees, uses and deletes what its tenant made of it."""
    restricted = ft.client(await ft.key("ft-listed", models=[BASE]))
    elsewhere = ft.client(await ft.key("ft-listed", models=["another-model"]))
    job = await restricted.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(restricted)
    )
    name = fine_tuned_name(BASE, "ft-listed", None, job.id)
    await restricted.fine_tuning.jobs.cancel(job.id)  # (the test has no trainer)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    await JobStore(ft.redis).put_model(
        "ft-listed", name, {"base": BASE, "adapter": str(adapter), "job": job.id, "created": 1}
    )
    assert {m.id for m in (await restricted.models.list()).data} == {BASE, name}
    assert (await restricted.models.retrieve(name)).parent == BASE  # type: ignore[attr-defined]
    assert [m.id for m in (await elsewhere.models.list()).data] == []
    with pytest.raises(openai.NotFoundError):
        await elsewhere.models.retrieve(name)
    # Fine-tuning the base model outside its allow-list: as on every route (it was a 400
    # saying "none is configured", where one is).
    with pytest.raises(openai.NotFoundError) as not_its:
        await elsewhere.fine_tuning.jobs.create(model=BASE, training_file="file-x")
    assert (not_its.value.code, not_its.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as allowed_none:
        await elsewhere.fine_tuning.jobs.create(model="another-model", training_file="file-x")
    assert allowed_none.value.code == "model_not_available"
    assert "none is open to this key" in allowed_none.value.message
    assert (await restricted.models.delete(name)).deleted


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    error: dict[str, Any] = body.get("error", body)
    return error


async def test_the_trainer_refuses_a_config_it_cannot_run(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("dev_mode: true\nauth: {required: false}\n")
    code, _, err = await run_cli("trainer", "--config", str(config))
    assert code == 2
    assert "redis_url is required" in err


async def test_a_run_failed_on_its_data_names_the_training_file() -> None:
    bad_line = failed_training("line 3: weight must be 0 or 1")
    assert (bad_line.message, bad_line.param) == (
        "Training failed: line 3: weight must be 0 or 1",
        "training_file",
    )
    assert failed_training("CUDA out of memory").param is None


async def test_a_job_create_whose_reply_came_late_makes_one_job(tmp_path: Path) -> None:
    """Found by review: a job whose storing transaction ran but answered after
    redis_timeout_s was a 503 "try again" (and an SDK's retry made a second job, both trained
    and billed). The job's record is read back once Redis answers, and a job stored is
    answered as created (queued by the trainers' sweep if its queueing failed too)."""
    async with finetune_stack(tmp_path, proxied=True) as stack:
        assert stack.proxy is not None
        client = stack.client(await stack.key("late-ft"))
        training_file = await upload_dataset(client)
        stack.proxy.set_mode("delay", delay_s=1.5, late=TRANSACTION)  # they run; replies late
        try:
            job = await client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
        finally:
            stack.proxy.set_mode("pass")
        assert stack.proxy.delayed >= 1
        assert job.status == "queued"
        listed = [j.id async for j in client.fine_tuning.jobs.list()]
    assert listed == [job.id]
