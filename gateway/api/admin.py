"""The admin API under /admin/v1: keys, tenants, engines. Authorised by the admin token only."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.credential_gate import admin_token_ok, admin_unauthorized
from gateway.api.responses import json_response, page_response, unknown_cursor
from gateway.auth.api_keys import PREFIX, format_key, hash_secret, new_secret, parse_key
from gateway.auth.issue import issue_key
from gateway.auth.records import (
    ID_PATTERN,
    Host,
    KeyRecord,
    LimitFields,
    TenantFields,
    TenantRecord,
    rfc3339,
)
from gateway.auth.revoke import delete_tenant, revoke
from gateway.auth.store import AuthStore, key_revoked, tenant_not_found
from gateway.deps import Gateway
from gateway.errors import InvalidRequest, NotFound, no_redis
from gateway.redis_pages import AfterNotFound
from gateway.routing.status import engines_status
from gateway.state import GatewayState
from gateway.unprintable import has_unprintable


async def require_admin(request: Request) -> None:
    """The check CredentialGate makes before the body is read, again for the route itself."""
    expected: str | None = request.app.state.gateway.settings.admin_token
    if not admin_token_ok(request.headers, expected):
        raise admin_unauthorized(request.headers, expected)


router = APIRouter(prefix="/admin/v1", dependencies=[Depends(require_admin)])
TenantId = Annotated[str, PathParam(pattern=ID_PATTERN)]


def _printable(value: str) -> str:
    """No control or invisible characters: a newline or a terminal escape in a label reached
    every `llmaas keys list` table (and the terminal reading it) as it was; a right-to-left
    override turned the rest of its row around, and a zero-width space made a model name that
    looks like another and allows nothing."""
    if has_unprintable(value):
        raise ValueError(
            "cannot contain control or invisible characters (newlines, tabs, escapes, "
            "zero-width or bidirectional formatting characters)"
        )
    return value


def _no_name(value: str | None) -> str | None:
    """An empty name is no name, at a key's creation as in an update (where it removes one)."""
    return value or None


def _id_of_key(value: str) -> str:
    """A key id in a path; a whole key (sk-llmaas-<id>-<secret>) stands for its id, so that its
    secret goes into no error message (and the access log masks it: middleware.py)."""
    if not value.startswith(PREFIX):
        return value
    parsed = parse_key(value)
    return parsed[0] if parsed is not None else f"{PREFIX}…"  # found by no id: a 404


KeyId = Annotated[str, AfterValidator(_id_of_key)]


def _model_name(value: str) -> str:
    """A name a request can send: an empty, blank or space-padded one allowed no model."""
    _printable(value)
    if not value.strip():
        raise ValueError("a model name cannot be empty or only whitespace")
    if value != value.strip():
        raise ValueError(f"the model name {value!r} starts or ends with whitespace")
    return value


# The allow-list as an admin sets it (stored records are read as they are: LimitFields).
AllowedModels = Annotated[
    list[Annotated[str, Field(max_length=256), AfterValidator(_model_name)]] | None,
    Field(max_length=1000),
]


EXAMPLE_TIME = "2027-01-01T00:00:00Z"
KeyName = Annotated[str, Field(max_length=200), AfterValidator(_printable)]
# The last moment a datetime (and so an RFC 3339 answer) can say, in UTC.
LAST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class KeySettings(LimitFields):
    """What an admin sets on a key, at its creation or later (PATCH)."""

    model_config = ConfigDict(extra="forbid")
    models: AllowedModels = None
    name: Annotated[KeyName | None, AfterValidator(_no_name)] = None
    expires_at: datetime | None = None

    @field_validator("expires_at", mode="wrap")
    @classmethod
    def _a_time(cls, value: object, read: ValidatorFunctionWrapHandler) -> datetime | None:
        """pydantic's own refusal ("input is too short") names no format: this one does."""
        try:
            parsed: datetime | None = read(value)
        except ValidationError as exc:
            raise ValueError(
                f"must be RFC 3339 with a time zone (e.g. {EXAMPLE_TIME}) or Unix seconds"
            ) from exc
        return parsed

    @field_validator("expires_at")
    @classmethod
    def _aware_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(
                f"must be RFC 3339 with a time zone (e.g. {EXAMPLE_TIME}) or Unix seconds"
            )
        if value is not None and value.timestamp() <= time.time():
            raise ValueError("must be in the future")
        if value is not None and value.timestamp() > LAST_TIME.timestamp():
            raise ValueError("must be at the latest 9999-12-31T23:59:59Z (in UTC)")
        return value

    def record_fields(self, fields: set[str]) -> dict[str, Any]:
        """`fields` of these settings as a KeyRecord stores them (expiry in epoch seconds)."""
        values = self.model_dump(include=fields)
        if "expires_at" in values:
            values["expires_at"] = None if self.expires_at is None else self.expires_at.timestamp()
        return values


class KeyCreate(KeySettings):
    tenant: str = Field(pattern=ID_PATTERN)


class TenantPut(TenantFields):
    """A tenant's settings as an admin sets them: all of them (PUT), or those a PATCH names."""

    model_config = ConfigDict(extra="forbid")
    models: AllowedModels = None
    media_hosts: list[Host] | None = Field(default=None, max_length=100)


def store_of(gw: GatewayState) -> AuthStore:
    if gw.auth.store is None:
        raise no_redis("The admin API")
    return gw.auth.store


async def key_or_404(store: AuthStore, key_id: str) -> KeyRecord:
    return (await key_version_or_404(store, key_id))[0]


async def key_version_or_404(store: AuthStore, key_id: str) -> tuple[KeyRecord, bytes]:
    """The key's record and its stored JSON (to write it back only if unchanged), or 404."""
    found = await store.get_key_version(key_id)
    if found is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="id", code="key_not_found")
    return found


@router.post("/keys", response_model=None, status_code=201)
async def create_key(body: KeyCreate, gw: Gateway) -> Response:
    fields = body.record_fields(set(KeyCreate.model_fields))
    record, key, created = await issue_key(store_of(gw), gw.auth.pepper, **fields)
    return json_response({**record.view(), "key": key, "tenant_created": created}, status=201)


@router.get("/keys", response_model=None)
async def list_keys(
    gw: Gateway,
    tenant: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after: Annotated[str | None, Query(max_length=64)] = None,
    active: Annotated[bool, Query()] = False,
) -> Response:
    """A page of keys, by tenant then creation time: `after` the last id of the page before
    (OpenAI's cursor), `has_more` whether another page follows. `active`: only keys that can
    authenticate (neither revoked nor expired): the others stay listed for good otherwise."""
    store = store_of(gw)
    try:
        if not active:
            records, more = await store.page_keys(tenant or None, limit, after)
        else:
            records, more = await _active_page(store, tenant or None, limit, after)
    except AfterNotFound:
        raise unknown_cursor(after, "API key") from None
    return page_response([r.view() for r in records], more)


async def _active_page(
    store: AuthStore, tenant: str | None, limit: int, after: str | None
) -> tuple[list[KeyRecord], bool]:
    """Up to `limit` usable keys after `after`, reading pages of every key until they are
    found (a page whose keys are all revoked is passed over, not answered empty)."""
    now = time.time()
    found: list[KeyRecord] = []
    while True:
        records, more = await store.page_keys(tenant, limit, after)
        for at, record in enumerate(records):
            if record.usable(now):
                found.append(record)
                if len(found) == limit:
                    return found, more or at + 1 < len(records)
        if not more or not records:
            return found, False
        after = records[-1].id


@router.get("/keys/{key_id}", response_model=None)
async def get_key(key_id: KeyId, gw: Gateway) -> Response:
    return json_response((await key_or_404(store_of(gw), key_id)).view())


@router.patch("/keys/{key_id}", response_model=None)
async def update_key(key_id: KeyId, body: KeySettings, gw: Gateway) -> Response:
    """Change a key's limits, models, name or expiry; what the body leaves out stays as it
    is, and null clears (a limit falls back to limits.key_defaults; every model, no name,
    never expires). Every replica drops its cached copy at once: the next request goes by the
    new settings."""
    store = store_of(gw)
    old, read = await key_version_or_404(store, key_id)
    if old.revoked:  # final: the store would let it be rewritten as revoked, not here
        raise key_revoked(key_id)
    record = old.model_copy(update=body.record_fields(body.model_fields_set))
    if record != old:
        await store.put_key(record, read=read)  # 409 if revoked or changed since the read
    return json_response(record.view())


@router.delete("/keys/{key_id}", response_model=None)
async def revoke_key(key_id: KeyId, gw: Gateway) -> Response:
    store = store_of(gw)
    record = await revoke(store, await key_or_404(store, key_id))
    return json_response(record.view())


@router.post("/keys/{key_id}/rotate", response_model=None)
async def rotate_key(key_id: KeyId, gw: Gateway) -> Response:
    """A new secret for the same key id; the old secret stops working on every replica."""
    store = store_of(gw)
    secret = new_secret()
    old, read = await key_version_or_404(store, key_id)
    if old.expired(time.time()):  # a new secret for it would be refused from the start
        raise InvalidRequest(
            f"The API key '{key_id}' expired at {rfc3339(old.expires_at or 0)}; renew it "
            "first (PATCH with a later expires_at: llmaas keys update --expires-at), or "
            "create a new key.",
            param="id",
            code="key_expired",
            status=409,
        )
    record = old.model_copy(update={"secret_hash": hash_secret(gw.auth.pepper, secret)})
    await store.put_key(record, read=read)  # 409 if another rotation (or any write) came first
    return json_response({**record.view(), "key": format_key(record.id, secret)})


def _tenant_view(record: TenantRecord) -> dict[str, Any]:
    return {**record.model_dump(), "created_at": rfc3339(record.created_at)}


@router.put("/tenants/{tenant_id}", response_model=None)
async def put_tenant(tenant_id: TenantId, body: TenantPut, gw: Gateway) -> Response:
    """Replace the tenant's limits and models (omitted: no limit at this scope)."""
    store = store_of(gw)
    existing = await store.get_tenant(tenant_id)
    created = existing.created_at if existing else time.time()
    record = TenantRecord.model_validate(
        {"id": tenant_id, "created_at": created, **body.model_dump()}
    )
    await store.put_tenant(record)
    return json_response(_tenant_view(record))


@router.patch("/tenants/{tenant_id}", response_model=None)
async def update_tenant(tenant_id: TenantId, body: TenantPut, gw: Gateway) -> Response:
    """Change some of a tenant's settings: what the body leaves out stays as it is, and null
    clears (a limit falls back to limits.tenant_defaults; every model; the engines' priority;
    the gateway's media hosts). PUT replaces them all: raising a tenant's tpm so dropped its
    model allow-list."""
    store = store_of(gw)
    found = await store.get_tenant_version(tenant_id)
    if found is None:
        raise tenant_not_found(tenant_id)
    old, read = found
    record = old.model_copy(update=body.model_dump(include=body.model_fields_set))
    if record != old:
        await store.change_tenant(record, read)  # 409 if changed since the read
    return json_response(_tenant_view(record))


@router.delete("/tenants/{tenant_id}", response_model=None)
async def remove_tenant(tenant_id: TenantId, gw: Gateway) -> Response:
    """Delete a tenant: every key of it is revoked (at once on every replica, as one revoked
    alone), its record and key listings go; its usage records stay. A later PUT of the id
    makes a new tenant, with none of these keys."""
    deleted = await delete_tenant(store_of(gw), tenant_id)
    if deleted is None:
        raise tenant_not_found(tenant_id)
    record, revoked = deleted
    return json_response({**_tenant_view(record), "deleted": True, "keys_revoked": revoked})


@router.get("/tenants/{tenant_id}", response_model=None)
async def get_tenant(tenant_id: TenantId, gw: Gateway) -> Response:
    record = await store_of(gw).get_tenant(tenant_id)
    if record is None:
        raise tenant_not_found(tenant_id)
    return json_response(_tenant_view(record))


@router.get("/tenants", response_model=None)
async def list_tenants(
    gw: Gateway,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    after: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """A page of tenants by id (`after`: the last id of the page before, as for keys)."""
    try:
        records, more = await store_of(gw).page_tenants(limit, after)
    except AfterNotFound:
        raise unknown_cursor(after, "tenant") from None
    return page_response([_tenant_view(r) for r in records], more)


@router.get("/engines", response_model=None)
async def list_engines(gw: Gateway) -> Response:
    """Every engine this replica knows: models, adapters, health, load, in-flight, errors."""
    return json_response({"object": "list", "data": engines_status(gw.registry)})
