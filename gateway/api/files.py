"""The Files API under /v1/files: upload, list, retrieve, download and delete, per tenant.

A file belongs to the caller's tenant: another tenant's id answers 404, as an unknown one does.
Uploads are streamed to storage, size-bounded, and a `fine-tune` file is checked line by line
before it is stored (a 400 names the first bad line), so what is listed is always usable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.body_encoding import content_encoding
from gateway.api.download import DownloadResponse
from gateway.api.responses import json_response, page_response, unknown_cursor
from gateway.auth.principal import Principal
from gateway.deps import Caller, Gateway
from gateway.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    no_redis,
    tenant_at_most,
)
from gateway.files.finetune_format import FileFormatError, check_chat_jsonl
from gateway.files.purposes import PURPOSES
from gateway.files.records import FILE_ID_PATTERN, FileRecord, new_file_id
from gateway.files.storage import DirectoryStorage, FileStorage, PartialFile, stale_part_s
from gateway.files.store import FileStore
from gateway.files.upload import MULTIPART_OVERHEAD, boundary_of, receive_upload, too_large
from gateway.finetune.job_store import JobStore, active_key
from gateway.finetune.jobs import FINAL
from gateway.limits.failures import classify
from gateway.redis_client import REDIS_FAILURES, read_back, redis_error
from gateway.redis_pages import AfterNotFound
from gateway.state import GatewayState

router = APIRouter(prefix="/v1/files")
log = logging.getLogger("llmaas.files")
# An upload's record still unknown past the read-back (Redis away): read again this often, one
# GET per such upload, until Redis answers.
UNSURE_EVERY_S = 5.0
FileId = Annotated[str, PathParam(pattern=FILE_ID_PATTERN)]


def file_not_found(file_id: str) -> NotFound:
    """The answer for a file id that names none of the caller's files."""
    return NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")


def _parts(gw: GatewayState) -> tuple[FileStore, FileStorage]:
    if gw.redis is None:
        raise no_redis("The Files API")
    return FileStore(gw.redis), DirectoryStorage(gw.settings.files.dir)


async def _own(store: FileStore, caller: Principal, file_id: str) -> FileRecord:
    record = await store.get(caller.tenant, file_id)
    if record is None:
        raise file_not_found(file_id)
    return record


@router.post("", response_model=None)
async def create_file(request: Request, gw: Gateway, caller: Caller) -> Response:
    """Store an upload. It counts against its key's and tenant's max_concurrency in this
    process while it lasts, as an inference request does (limits/local_inflight.py): a key
    cannot hold more of the process's request slots with slow uploads than its limit."""
    held = gw.admission.hold(caller)
    try:
        return await _create_file(request, gw, caller)
    finally:
        if held is not None:
            held.release()


async def _create_file(request: Request, gw: GatewayState, caller: Principal) -> Response:
    store, storage = _parts(gw)
    limits = gw.settings.files
    boundary = boundary_of(request.headers.get("content-type"))
    if (encoding := content_encoding(request.headers.raw)) is not None:
        # (a gzip body failed as multipart that could not be parsed; one labelled gzip and
        # sent plain was stored as it came)
        raise UnsupportedMediaType(
            f"A file upload is read as it arrives and cannot be sent with Content-Encoding "
            f"'{encoding}': send the multipart body uncompressed.",
            code="unsupported_content_encoding",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_file_bytes + MULTIPART_OVERHEAD:
        raise too_large(limits.max_file_bytes)
    if await store.count(caller.tenant) >= limits.max_files_per_tenant:  # before the upload
        raise _too_many_files(limits.max_files_per_tenant)
    file_id = new_file_id()
    partial = storage.create(caller.tenant, file_id)
    stale_s = stale_part_s(gw.settings.keep_alive_s)
    room = _room(
        store, storage, caller.tenant, partial, most=limits.max_bytes_per_tenant, stale_s=stale_s
    )
    try:
        await room(max(0, int(declared) - MULTIPART_OVERHEAD) if declared.isdigit() else 1)
        upload = await receive_upload(
            request.stream(), boundary, partial, limits.max_file_bytes, room
        )
        # The key was read with the head: read again, so that a key revoked (or a tenant
        # disabled) while the upload came has nothing stored (found by review).
        await gw.auth.principal(request.headers)
        purpose = _purpose(upload.fields.get("purpose"))
        await partial.finish()
        lines = await _checked(partial.path, purpose)
        record = FileRecord(
            id=file_id,
            tenant=caller.tenant,
            filename=upload.filename or "upload",
            purpose=purpose,
            bytes=partial.size,
            created_at=int(time.time()),
            lines=lines,
        )
        await partial.commit()
    except OSError as exc:  # the storage directory: missing volume, read-only, full
        await asyncio.shield(partial.discard())
        raise ServiceUnavailable(
            "File storage is unavailable right now; nothing was stored.",
            code="file_storage_unavailable",
        ) from exc
    except BaseException:
        await asyncio.shield(partial.discard())
        raise
    await _list(gw, store, storage, caller.tenant, record)
    return json_response(record.view())


async def _list(
    gw: GatewayState, store: FileStore, storage: FileStorage, tenant: str, record: FileRecord
) -> None:
    """List the upload's record (its bytes are in place), or remove them and raise."""
    limits = gw.settings.files
    try:  # (counted again as it is listed: concurrent uploads passed the first count)
        most = (limits.max_files_per_tenant, limits.max_bytes_per_tenant)
        stored = await store.put(record, int(time.time() * 1000), *most)
        if stored == "too_many_files":
            raise _too_many_files(limits.max_files_per_tenant)
        if stored == "too_many_bytes":
            used = await store.bytes_used(tenant) or 0
            raise _too_many_bytes(used, limits.max_bytes_per_tenant, record.bytes)
    except BaseException as exc:
        if not _may_have_run(exc):  # not listed, so not kept
            await asyncio.shield(storage.delete(tenant, record.id))
            raise
        # Listed or not: Redis will say, once it answers (a 503 here, with the bytes deleted,
        # left a listed file whose contents were a 503 for good).
        settling = _unsure(gw, _settle_unsure(gw, store, storage, tenant, record.id))
        if isinstance(exc, asyncio.CancelledError):  # the client left: settled in the background
            raise
        listed = await asyncio.shield(settling)
        if listed is None:
            raise _outcome_unknown(record.id) from exc
        if not listed:
            raise


def _may_have_run(exc: BaseException) -> bool:
    """The record's write may have run: its reply is late or lost (or its client left)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    return isinstance(exc, REDIS_FAILURES) and classify(exc).may_have_run


def _unsure(
    gw: GatewayState, settling: Coroutine[object, object, bool | None]
) -> asyncio.Task[bool | None]:
    """A task settling an unsure upload, which a shutdown stops (its bytes then stay)."""
    task = asyncio.create_task(settling)
    gw.unsure_uploads.add(task)
    task.add_done_callback(gw.unsure_uploads.discard)
    return task


async def _settle_unsure(
    gw: GatewayState, store: FileStore, storage: FileStorage, tenant: str, file_id: str
) -> bool | None:
    """An upload whose record's write timed out or lost its connection: its record read once
    Redis answers (redis_client.read_back, 5 s at most). Listed, the bytes stay (True: the
    upload is stored, and answered so); not, they are removed (False). Still unknown (None),
    they stay under their name, never a listed file without its bytes, and the record is read
    again later (_settle_later)."""
    try:
        listed = await read_back(lambda: store.get(tenant, file_id)) is not None
    except REDIS_FAILURES as exc:
        fields = {"tenant": tenant, "file": file_id, "error": redis_error(exc)}
        log.warning("upload's record unknown: its bytes kept", extra={"fields": fields})
        _unsure(gw, _settle_later(store, storage, tenant, file_id))
        return None
    if not listed:
        await _remove_unlisted(storage, tenant, file_id)
    return listed


async def _settle_later(
    store: FileStore, storage: FileStorage, tenant: str, file_id: str
) -> bool | None:
    """An upload's record still unknown after the read-back: read every UNSURE_EVERY_S until
    Redis answers (or the gateway stops). Not listed, its bytes are removed: they took disk for
    good, never listed (the client, told it may be stored, finds it is not when it lists)."""
    while True:
        await asyncio.sleep(UNSURE_EVERY_S)
        try:
            listed = await store.get(tenant, file_id) is not None
        except REDIS_FAILURES:
            continue
        if not listed:
            await _remove_unlisted(storage, tenant, file_id)
        return listed


async def _remove_unlisted(storage: FileStorage, tenant: str, file_id: str) -> None:
    await _remove_bytes(storage, tenant, file_id, "unlisted upload's bytes not removed")


async def _remove_bytes(storage: FileStorage, tenant: str, file_id: str, failed: str) -> None:
    """A file's bytes removed once it is no longer listed; storage that cannot remove them
    (a volume gone read-only) leaves them, logged as `failed`: what the client asked for is
    done, and the record, gone already, cannot be put back."""
    try:
        await storage.delete(tenant, file_id)
    except OSError as exc:
        fields = {"tenant": tenant, "file": file_id, "error": repr(exc)}
        log.warning(failed, extra={"fields": fields})


def _outcome_unknown(file_id: str) -> ServiceUnavailable:
    """Not retried by the SDKs (x-should-retry: false, no Retry-After): each retry could store
    the file once more."""
    return ServiceUnavailable(
        f"The file may have been stored as '{file_id}': the gateway's store (Redis) did not "
        "say in time. List your files before uploading it again.",
        code="store_unavailable",
        headers={"x-should-retry": "false"},
    )


def _room(
    store: FileStore,
    storage: FileStorage,
    tenant: str,
    partial: PartialFile,
    *,
    most: int,
    stale_s: float,
) -> Callable[[int], Awaitable[None]]:
    """What refuses an upload of `size` bytes so far that would take its tenant past `most`
    with its files and its other uploads in progress (they counted only once stored: six
    stalled uploads held six times a tenant's bytes on the volume all share)."""

    async def room(size: int) -> None:
        used = await store.bytes_used(tenant)
        if used is None:
            return  # not counted yet: the store counts them as it lists the file
        uploading = await storage.uploading(tenant, partial, stale_s)
        if used + uploading + size > most:
            raise _too_many_bytes(used, most, uploading=uploading)

    return room


def _too_many_files(most: int) -> RateLimited:
    return tenant_at_most(
        f"Your tenant has {most} files, the most it may keep; delete some first.",
        limit_kind="files",
        code="too_many_files",
    )


def _too_many_bytes(
    used: int, most: int, size: int | None = None, *, uploading: int = 0
) -> RateLimited:
    upload = "this upload" if size is None else f"this file ({size} bytes)"
    held = f"files hold {used} bytes"
    if uploading:
        held = f"files and uploads in progress hold {used + uploading} bytes"
    return tenant_at_most(
        f"Your tenant's {held}; with {upload} they would pass {most}, the most they may "
        "hold; delete some first.",
        limit_kind="file_bytes",
        code="too_many_file_bytes",
    )


def _purpose(value: str | None) -> str:
    if value is None:
        raise InvalidRequest(
            "The upload has no 'purpose' field.", param="purpose", code="missing_required_parameter"
        )
    if value not in PURPOSES:
        raise InvalidRequest(
            f"Invalid 'purpose': {value[:64]!r}; expected one of {', '.join(PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return value


async def _checked(path: Path, purpose: str) -> int | None:
    if purpose != "fine-tune":
        return None
    try:
        return await asyncio.to_thread(check_chat_jsonl, path)
    except FileFormatError as exc:
        raise InvalidRequest(
            f"Invalid fine-tune file: {exc}", param="file", code="invalid_file_format"
        ) from exc


@router.get("", response_model=None)
async def list_files(
    gw: Gateway,
    caller: Caller,
    *,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    store, _ = _parts(gw)
    try:
        records, more = await store.page(caller.tenant, purpose, limit, order, after)
    except AfterNotFound:
        raise unknown_cursor(after, "file") from None
    return page_response([r.view() for r in records], more)


@router.get("/{file_id}", response_model=None)
async def retrieve_file(file_id: FileId, gw: Gateway, caller: Caller) -> Response:
    store, _ = _parts(gw)
    return json_response((await _own(store, caller, file_id)).view())


@router.get("/{file_id}/content", response_model=None)
async def file_content(file_id: FileId, gw: Gateway, caller: Caller) -> Response:
    store, storage = _parts(gw)
    record = await _own(store, caller, file_id)
    try:
        contents = await storage.open(caller.tenant, record.id)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            await _own(store, caller, file_id)  # deleted meanwhile: 404, as after the delete
        raise ServiceUnavailable(
            "File storage is unavailable right now: the file's contents cannot be read.",
            code="file_storage_unavailable",
        ) from exc
    return DownloadResponse(
        contents.chunks(),
        media_type="application/octet-stream",
        headers={"content-length": str(contents.size)},
        background=BackgroundTask(contents.close),  # (also when the client left before its end)
        write_timeout_s=gw.settings.upstream.write_timeout_s,
    )


@router.delete("/{file_id}", response_model=None)
async def delete_file(file_id: FileId, gw: Gateway, caller: Caller) -> Response:
    store, storage = _parts(gw)
    jobs = JobStore(store.redis)

    async def not_in_use(_: FileRecord) -> None:
        for job in await jobs.active(caller.tenant):
            if job.training_file == file_id and job.status not in FINAL:
                raise InvalidRequest(
                    f"The file {file_id} is the training file of fine-tuning job {job.id}, "
                    f"which is {job.status}: cancel the job or wait until it ends, then delete "
                    "the file.",
                    param="id",
                    code="file_in_use",
                    status=409,
                    headers={"x-should-retry": "false"},  # a retry soon finds it in use (SDKs)
                )

    # One step with the check: a job created on the file meanwhile changes the active set
    # (watched), and its creation fails if the file's record is gone (JobStore.create).
    record = await store.delete(
        caller.tenant, file_id, watch=[active_key(caller.tenant)], unless=not_in_use
    )
    if record is None:
        raise file_not_found(file_id)
    await _remove_bytes(storage, caller.tenant, file_id, "deleted file's bytes not removed")
    return json_response({"id": file_id, "object": "file", "deleted": True})
