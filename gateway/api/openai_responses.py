"""The Responses API under /v1/responses: create (plain and streamed), retrieve, cancel, delete.

Requests go through the same authentication, limits and metering as chat. What differs is
affinity: vLLM keeps a stored response in the memory of the engine that made it, so a request
that names one (`previous_response_id`, or the id in the path) goes to that engine only, found
in the tenant's own record of its responses (gateway/api/response_homes.py). An id the tenant
did not make is answered exactly like an unknown one: 404 `response_not_found`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import openapi_bodies
from gateway.api.body import check_response_parts, optional, require, require_nonempty_list
from gateway.api.engine_fields import grammar_field
from gateway.api.openai import adapter_reload, read_model_request
from gateway.api.response_homes import Home
from gateway.api.responses import json_response
from gateway.auth.principal import Principal
from gateway.deps import Caller, Gateway
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.limits.estimate import response_input_tokens, response_tokens
from gateway.metering.accounting import Charge
from gateway.metering.usage import Usage
from gateway.proxy.call import ProxyCall
from gateway.proxy.collect_events import stream_response_request
from gateway.proxy.outcome import ProxyResult
from gateway.proxy.relay import ProxyResponse
from gateway.redis_client import REDIS_FAILURES, redis_error
from gateway.request_context import info_of
from gateway.routing.engines import Engine, ModelPool
from gateway.state import GatewayState

router = APIRouter(prefix="/v1")
log = logging.getLogger("llmaas.responses")


class ResponseNotFound(NotFound):
    type = "invalid_request_error"

    def __init__(self, response_id: str, param: str, why: str = "") -> None:
        super().__init__(
            f"Response with id '{response_id}' not found{why}.",
            param=param,
            code="response_not_found",
        )


def check_create(body: dict[str, Any]) -> None:
    """The fields the gateway relies on: `input` (to reserve tokens), `stream`, `store`,
    `previous_response_id`, `max_output_tokens`; and two it refuses."""
    if isinstance(require(body, "input", str, list), list):
        check_response_parts(require_nonempty_list(body, "input"))  # (empty: as OpenAI does)
    for field, kind in (
        ("stream", bool),
        ("store", bool),
        ("previous_response_id", str),
        ("max_output_tokens", int),
    ):
        optional(body, field, kind)
    if body.get("background") is True:
        raise InvalidRequest(
            "Background responses are not supported by this gateway: their usage could not be "
            "metered. Send the request without 'background', streamed if it takes long.",
            param="background",
            code="unsupported_parameter",
        )
    if "request_id" in body:  # vLLM names the stored response by it: ids must be the engine's
        raise InvalidRequest(
            "'request_id' is not accepted: the engine names each response itself.",
            param="request_id",
            code="unsupported_parameter",
        )


@router.post("/responses", response_model=None, openapi_extra=openapi_bodies.RESPONSES)
async def create_response(request: Request, gw: Gateway, caller: Caller) -> Response:
    received_ms, body, raw, model, pool, caller = await read_model_request(
        request, gw, caller, "responses", check_create
    )
    previous = body.get("previous_response_id")
    engines = None
    if previous is not None:
        home = await _find(gw, caller, previous, "previous_response_id")
        if not caller.may_use(home.model):  # made with a model this key may not use
            raise ResponseNotFound(previous, "previous_response_id")
        engines = [_engine_continuing(gw, pool, home, previous)]
    caller = gw.admission.with_defaults(caller)
    limits = gw.settings.limits
    tokens = response_tokens(body, limits.default_max_tokens, pool.context_length)
    admission = await gw.admission.admit(
        caller, body, pool.context_length, tokens=tokens, output_field="max_output_tokens"
    )
    stream = body.get("stream") is True
    call = ProxyCall(
        "responses",
        pool,
        raw if stream else stream_response_request(raw, body),  # metered as it goes
        stream,
        headers={} if admission is None else admission.headers(),
        responses=True,
        engines=engines,
        input_estimate=response_input_tokens(body, pool.context_length),
        unstreamed=None if stream else raw,
        grammar=grammar_field(body),
        reload=adapter_reload(gw, caller, model),
        stored=None if body.get("store") is False else _noting(gw, caller.tenant, model),
    )
    charge = Charge(
        _request_id(request), "responses", model, stream, caller, admission, received_ms
    )
    return ProxyResponse(gw.proxy, call, gw.accounting.reporter(charge))


def _noting(gw: GatewayState, tenant: str, model: str) -> Callable[[str, str], Awaitable[None]]:
    """Notes which engine holds a response the engine stored, before its client has it whole
    (ProxyCall.stored): a follow-up sent the moment it arrives finds it. (Noted after the
    answer, as until 2026-12-07, such a follow-up could be a 404.) Shielded: a client leaving
    as it is written does not undo it."""

    async def note(response_id: str, engine: str) -> None:
        try:
            await asyncio.shield(gw.homes.remember(tenant, response_id, Home(model, engine)))
        except REDIS_FAILURES as exc:  # kept in this process until Redis takes it
            log.warning(
                "response home kept in this process only: Redis could not store it",
                extra={"fields": {"engine": engine, "error": redis_error(exc)}},
            )

    return note


@router.get("/responses/{response_id}", response_model=None)
async def retrieve_response(
    response_id: str, request: Request, gw: Gateway, caller: Caller
) -> Response:
    _refuse_restream(request.query_params.get("stream"))
    return await _at_home(request, gw, caller, response_id, method="GET")


def _refuse_restream(stream: str | None) -> None:
    """`?stream=true` replays a background response's events; without background responses
    (refused at create) there are none to replay, and vLLM would answer a stored response's
    JSON to a client reading events. Refused, naming the parameter; `false` is the default."""
    if stream is None or stream.lower() in ("false", "0"):
        return
    if stream.lower() in ("true", "1"):
        raise InvalidRequest(
            "'stream' replays the events of a background response, and this gateway runs "
            "none; retrieve the response without 'stream'.",
            param="stream",
            code="unsupported_parameter",
        )
    raise InvalidRequest(f"'stream' must be true or false, not {stream!r}.", param="stream")


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(
    response_id: str, request: Request, gw: Gateway, caller: Caller
) -> Response:
    return await _at_home(request, gw, caller, response_id, method="POST", tail="/cancel")


@router.post("/responses/compact", response_model=None, include_in_schema=False)
@router.post("/responses/input_tokens", response_model=None, include_in_schema=False)
async def unserved_responses_route(request: Request) -> Response:
    """OpenAI's routes beside /responses/{id} that vLLM 0.32 does not serve: unknown here, as
    any route the gateway does not serve (they were a 405 of /responses/{id}, which the SDKs
    do not read as NotFound)."""
    raise HTTPException(404)  # (answered as every unknown route: 404 unknown_url)


@router.delete("/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, gw: Gateway, caller: Caller) -> Response:
    """vLLM cannot delete a stored response; the gateway forgets where it is, which makes it
    unreachable for good (the engine frees it only when it restarts). A key may delete only
    what it may read: a response made with a model outside its allow-list is not found."""
    home = await _find(gw, caller, response_id, "response_id")
    if not caller.may_use(home.model):
        raise ResponseNotFound(response_id, "response_id")
    try:
        known = await gw.homes.forget(caller.tenant, response_id)
    except REDIS_FAILURES as exc:
        raise _store_unavailable() from exc
    if not known:
        raise ResponseNotFound(response_id, "response_id")
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def _at_home(
    request: Request,
    gw: GatewayState,
    caller: Principal,
    response_id: str,
    *,
    method: str,
    tail: str = "",
) -> Response:
    """Retrieve or cancel at the engine that holds the response: a request that generates
    nothing, so it reserves no tokens and is recorded with none (the stored response's usage
    was billed when it was made)."""
    received_ms = int(time.time() * 1000)
    home = await _find(gw, caller, response_id, "response_id")
    if not caller.may_use(home.model):  # as for an id never made: its engine is not at fault
        raise ResponseNotFound(response_id, "response_id")
    pool = gw.registry.pool(home.model)
    if pool is None:
        raise ResponseNotFound(response_id, "response_id", _GONE)
    engine = _engine_of(pool, home, response_id, "response_id")
    caller = gw.admission.with_defaults(caller)
    admission = await gw.admission.admit(caller, {}, tokens=0)
    route = "responses/{id}" + tail  # the metrics label: no id in it
    call = ProxyCall(
        route,
        pool,
        b"",
        False,
        headers={} if admission is None else admission.headers(),
        responses=True,
        method=method,
        path=f"/v1/responses/{quote(response_id, safe='')}{tail}",
        engines=[engine],
    )
    charge = Charge(_request_id(request), route, home.model, False, caller, admission, received_ms)
    account = gw.accounting.reporter(charge)

    async def report(result: ProxyResult) -> None:
        await account(dataclasses.replace(result, usage=Usage()))

    return ProxyResponse(gw.proxy, call, report)


_GONE = ": the engine that stored it no longer serves it"


async def _find(gw: GatewayState, caller: Principal, response_id: str, param: str) -> Home:
    try:
        home = await gw.homes.find(caller.tenant, response_id)
    except REDIS_FAILURES as exc:
        raise _store_unavailable() from exc
    if home is None:
        raise ResponseNotFound(response_id, param)
    return home


def _engine_of(pool: ModelPool, home: Home, response_id: str, param: str) -> Engine:
    """The engine that holds the response, if it still serves this model."""
    engine = _home_in(pool, home)
    if engine is None:
        raise ResponseNotFound(response_id, param, _GONE)
    return engine


def _home_in(pool: ModelPool, home: Home) -> Engine | None:
    """The pool's engine that holds the response, if it is one of the pool's."""
    return next((engine for engine in pool.engines if engine.url == home.engine), None)


def _engine_continuing(gw: GatewayState, pool: ModelPool, home: Home, previous: str) -> Engine:
    """The engine that holds `previous`, if it serves the model asked for. A conversation
    moved to a model its engine does not serve (OpenAI allows it: its responses live in one
    store) is a 400 naming the model it can go on with, not a 404 blaming its engine."""
    engine = _home_in(pool, home)
    if engine is not None:
        return engine
    home_pool = gw.registry.pool(home.model)
    if home.model != pool.name and home_pool is not None and _home_in(home_pool, home) is not None:
        raise InvalidRequest(
            f"Response '{previous}' was made with model '{home.model}' and is stored by "
            f"the engine that serves it, which does not serve '{pool.name}': continue "
            f"this conversation with model '{home.model}', or start a new one (without "
            "previous_response_id).",
            param="previous_response_id",
            code="previous_response_model",
        )
    raise ResponseNotFound(previous, "previous_response_id", _GONE)


def _store_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Stored responses cannot be looked up right now; try again shortly.",
        code="response_store_unavailable",
        headers={"retry-after": "1"},
    )


def _request_id(request: Request) -> str:
    return info_of(request.scope).request_id
