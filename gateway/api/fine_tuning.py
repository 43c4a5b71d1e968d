"""The Fine-tuning API under /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause,
resume, events and checkpoints, per tenant, as the OpenAI SDK expects. Training happens in
`llmaas trainer`."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.fine_tuning_bodies import JobCreate
from gateway.api.job_filter import filtered_page, metadata_filter
from gateway.api.responses import json_response, unknown_cursor
from gateway.auth.principal import Principal
from gateway.deps import Caller, Gateway
from gateway.errors import InvalidRequest, ModelNotFound, NotFound, no_redis, tenant_at_most
from gateway.files.storage import DirectoryStorage
from gateway.files.store import FileStore, file_key
from gateway.finetune.billing import bill_cancelled
from gateway.finetune.checkpoints import remove_checkpoint
from gateway.finetune.job_store import JobStore, LimitReached, RequiredKeyGone
from gateway.finetune.jobs import (
    ACTIVE,
    JOB_ID_PATTERN,
    Hyperparameters,
    Job,
    new_job_id,
)
from gateway.finetune.sweep import fail_if_lost
from gateway.redis_pages import AfterNotFound
from gateway.state import GatewayState

router = APIRouter(prefix="/v1/fine_tuning/jobs")
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN)]


def _store(gw: GatewayState) -> JobStore:
    if gw.redis is None:
        raise no_redis("The Fine-tuning API")
    return JobStore(gw.redis)


def job_not_found(job_id: str) -> NotFound:
    """The answer for a job id that names none of the caller's jobs."""
    return NotFound(
        f"No fine-tuning job '{job_id}'.", param="fine_tuning_job_id", code="job_not_found"
    )


async def _own(gw: GatewayState, caller: Principal, job_id: str) -> Job:
    store = _store(gw)
    job = await store.get(caller.tenant, job_id)
    if job is None:
        raise job_not_found(job_id)
    return await fail_if_lost(store, _storage(gw), job)


def _storage(gw: GatewayState) -> DirectoryStorage:
    """Where adapters and checkpoints lie (beside the tenants' files)."""
    return DirectoryStorage(gw.settings.files.dir)


@router.post("", response_model=None)
async def create_job(body: JobCreate, gw: Gateway, caller: Caller) -> Response:
    store = _store(gw)
    settings = gw.settings.fine_tuning
    if not caller.may_use(body.model):  # as on every route: a model outside the allow-list
        raise ModelNotFound(body.model)
    if body.model not in settings.base_models:
        offered = ", ".join(sorted(m for m in settings.base_models if caller.may_use(m)))
        none = "none is configured" if not settings.base_models else "none is open to this key"
        raise InvalidRequest(
            f"The model '{body.model}' is not available for fine-tuning"
            + (f"; available: {offered}." if offered else f"; {none}."),
            param="model",
            code="model_not_available",
        )
    hyper = _hyperparameters(body, settings.max_lora_rank)
    examples = await _training_examples(gw, caller, body.training_file)
    await _room_for_a_model(gw, caller.tenant)
    now = int(time.time())
    job = Job(
        id=new_job_id(),
        tenant=caller.tenant,
        key_id=caller.key_id,
        model=body.model,
        training_file=body.training_file,
        status="queued",  # (its file was checked above: OpenAI's validating_files is past)
        created_at=now,
        hyperparameters=hyper,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        suffix=body.suffix,
        metadata=body.metadata,
        examples=examples,
    )
    try:
        await store.create(
            job,
            settings.max_active_jobs_per_tenant,
            [
                f"Created fine-tuning job: {job.id}",
                f"Validated the training file ({examples} examples); the job is queued",
            ],
            requires=file_key(caller.tenant, body.training_file),  # not deleted meanwhile
        )
    except RequiredKeyGone:
        raise _no_training_file(body.training_file) from None
    except LimitReached:
        raise tenant_at_most(
            f"Your tenant has {settings.max_active_jobs_per_tenant} fine-tuning jobs queued, "
            "running or paused, the most it may; wait for one to finish, or cancel one (a "
            "paused job does not finish by itself).",
            limit_kind="fine_tuning_jobs",
            code="too_many_active_jobs",
        ) from None
    return json_response(job.view())


def _hyperparameters(body: JobCreate, max_rank: int) -> Hyperparameters:
    given: dict[str, Any] = {}
    where = "hyperparameters"  # where the request gave lora_rank: the field its 400 names
    if body.hyperparameters is not None:
        given.update(body.hyperparameters.model_dump(exclude_unset=True))
    if body.method is not None and body.method.supervised is not None:
        method = body.method.supervised.hyperparameters
        if method is not None:
            both = method.model_dump(exclude_unset=True)
            if "lora_rank" in both:
                where = "method.supervised.hyperparameters"
            clash = sorted(k for k, v in both.items() if k in given and given[k] != v)
            if clash:  # (OpenAI's deprecated top-level form beside the method's)
                raise InvalidRequest(
                    f"'hyperparameters.{clash[0]}' ({given[clash[0]]!r}) and "
                    f"'method.supervised.hyperparameters.{clash[0]}' ({both[clash[0]]!r}) "
                    "differ: give it once, in method.supervised.hyperparameters.",
                    param=f"method.supervised.hyperparameters.{clash[0]}",
                    code="invalid_value",
                )
            given.update(both)
    rank = given.get("lora_rank", "auto")
    if rank != "auto" and rank > max_rank:
        raise InvalidRequest(
            f"Invalid '{where}.lora_rank': {rank}; the engines serve ranks up to {max_rank}.",
            param=f"{where}.lora_rank",
            code="invalid_value",
        )
    return Hyperparameters(**given)


def _no_training_file(file_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"No file '{file_id}' to train on: upload it with purpose 'fine-tune' first.",
        param="training_file",
        code="file_not_found",
    )


async def _room_for_a_model(gw: GatewayState, tenant: str) -> None:
    """A job makes an adapter on the volume every tenant shares, counted in the tenant's
    bytes with its files: none is started for a tenant already at files.max_bytes_per_tenant
    (its models were not counted at all: fine-tuning grew a tenant's share without bound)."""
    assert gw.redis is not None
    used = await FileStore(gw.redis).bytes_used(tenant)
    most = gw.settings.files.max_bytes_per_tenant
    if used is not None and used >= most:
        raise tenant_at_most(
            f"Your tenant's files and fine-tuned models hold {used} bytes, the most they may "
            f"({most}); delete some files or fine-tuned models first: a new job's model would "
            "hold more.",
            limit_kind="file_bytes",
            code="too_many_file_bytes",
        )


async def _training_examples(gw: GatewayState, caller: Principal, file_id: str) -> int:
    assert gw.redis is not None
    record = await FileStore(gw.redis).get(caller.tenant, file_id)
    if record is None:
        raise _no_training_file(file_id)
    if record.purpose != "fine-tune" or not record.lines:
        raise InvalidRequest(
            f"The file '{file_id}' was uploaded with purpose '{record.purpose}'; a training "
            "file needs purpose 'fine-tune'.",
            param="training_file",
            code="invalid_file_purpose",
        )
    return record.lines


@router.get("", response_model=None)
async def list_jobs(
    request: Request,
    gw: Gateway,
    caller: Caller,
    *,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Newest first; OpenAI sets no largest `limit` (10,000 here, as for files). OpenAI's
    `metadata[k]=v` keeps the jobs whose metadata has k = v (all of them, when several are
    given); `metadata=null` those without metadata."""
    store = _store(gw)
    wanted = metadata_filter(request)
    try:
        if wanted is None:
            jobs, more = await store.page(caller.tenant, limit, after)
        else:
            jobs, more = await filtered_page(store, caller.tenant, limit, after, wanted)
    except AfterNotFound:
        raise unknown_cursor(after, "job") from None
    data = [(await fail_if_lost(store, _storage(gw), j)).view() for j in jobs]
    return json_response({"object": "list", "data": data, "has_more": more})


@router.get("/{job_id}", response_model=None)
async def retrieve_job(job_id: JobId, gw: Gateway, caller: Caller) -> Response:
    return json_response((await _own(gw, caller, job_id)).view())


@router.post("/{job_id}/cancel", response_model=None)
async def cancel_job(job_id: JobId, gw: Gateway, caller: Caller) -> Response:
    store = _store(gw)
    job = await _own(gw, caller, job_id)
    cancelled = await store.transition(
        caller.tenant,
        job_id,
        ACTIVE,
        {"status": "cancelled", "finished_at": int(time.time())},
        message="The job was cancelled",
    )
    if cancelled is None:
        job = await _own(gw, caller, job_id)
        raise InvalidRequest(
            f"The job is already {job.status}; only a queued, running or paused job can be"
            " cancelled.",
            param="fine_tuning_job_id",
            code="job_not_active",
        )
    if job.status in ("paused", "queued") and not await store.trained_now(caller.tenant, job_id):
        # No trainer holds it (one that is still letting go of a pause, or took it since, ends
        # it as cancelled itself; both are idempotent): its checkpoint goes from here, and the
        # training before its pause is billed.
        await remove_checkpoint(_storage(gw), cancelled)
        if gw.ledger is not None:
            await bill_cancelled(gw.ledger, cancelled, 0, worker=cancelled.worker or "-")
    return json_response(cancelled.view())


@router.post("/{job_id}/pause", response_model=None)
async def pause_job(job_id: JobId, gw: Gateway, caller: Caller) -> Response:
    """Pause a queued or running job: a running one's training writes a checkpoint at the end
    of the step under way and stops, and its trainer moves on to the next job. It stays among
    the tenant's active jobs until it is resumed or cancelled."""
    store = _store(gw)
    await _own(gw, caller, job_id)
    paused = await store.transition(
        caller.tenant,
        job_id,
        ("queued", "running"),
        {"status": "paused", "estimated_finish": None},
        message="The job was paused",
    )
    if paused is None:
        raise await _not_now(gw, caller, job_id, done="paused", only="a queued or running")
    return json_response(paused.view())


@router.post("/{job_id}/resume", response_model=None)
async def resume_job(job_id: JobId, gw: Gateway, caller: Caller) -> Response:
    """Queue a paused job again. Its training goes on from the checkpoint the pause left
    (the adapter's weights and the optimizer's state after the last step it finished), or
    from the first step if it was paused before its training began."""
    store = _store(gw)
    await _own(gw, caller, job_id)
    if await store.trained_now(caller.tenant, job_id):  # its trainer is still letting go
        raise InvalidRequest(
            "The job's training is still stopping; resume it in a few seconds.",
            param="fine_tuning_job_id",
            code="job_stopping",
            status=409,
        )
    resumed = await store.transition(
        caller.tenant,
        job_id,
        ("paused",),
        {"status": "queued", "worker": None},
        message="The job was resumed and queued",
    )
    if resumed is None:
        raise await _not_now(gw, caller, job_id, done="resumed", only="a paused")
    await store.enqueue(resumed)
    return json_response(resumed.view())


async def _not_now(
    gw: GatewayState, caller: Principal, job_id: str, *, done: str, only: str
) -> InvalidRequest:
    job = await _own(gw, caller, job_id)
    return InvalidRequest(
        f"The job is {job.status}; only {only} job can be {done}.",
        param="fine_tuning_job_id",
        code="invalid_job_status",
    )


@router.get("/{job_id}/events", response_model=None)
async def list_events(
    job_id: JobId,
    gw: Gateway,
    caller: Caller,
    *,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    store = _store(gw)
    job = await _own(gw, caller, job_id)
    try:
        events, more = await store.events(job, limit, after)
    except KeyError:
        raise InvalidRequest(
            "Invalid 'after': no such event of this job.", param="after", code="invalid_value"
        ) from None
    return json_response({"object": "list", "data": [e.view() for e in events], "has_more": more})


@router.get("/{job_id}/checkpoints", response_model=None)
async def list_checkpoints(
    job_id: JobId,
    gw: Gateway,
    caller: Caller,
    *,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The adapter a succeeded job made is its one checkpoint (the final step): `limit` and
    `after` are checked as in any listing; after that one checkpoint there is none."""
    job = await _own(gw, caller, job_id)
    data: list[dict[str, object]] = []
    if job.status == "succeeded" and job.fine_tuned_model is not None:
        data.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": "ftckpt-" + job.id.removeprefix("ftjob-"),
                "created_at": job.finished_at,
                "fine_tuned_model_checkpoint": job.fine_tuned_model,
                "fine_tuning_job_id": job.id,
                "step_number": job.steps or 0,
                "metrics": {"step": job.steps, "train_loss": job.train_loss},
            }
        )
    if after is not None:
        if after not in [c["id"] for c in data]:
            raise InvalidRequest(
                "Invalid 'after': no such checkpoint of this job.",
                param="after",
                code="invalid_value",
            )
        data = []  # nothing follows the one checkpoint
    first = data[0]["id"] if data else None
    return json_response(
        {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": first}
    )
