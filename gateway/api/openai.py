"""The OpenAI-compatible surface under /v1: thin handlers that check, resolve and proxy."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from fastapi import APIRouter
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import openapi_bodies
from gateway.api.body import (
    check_parts,
    check_type,
    read_json,
    require_messages,
    require_model,
    require_nonempty_list,
    require_prompts,
    stream_flag,
)
from gateway.api.engine_fields import grammar_field
from gateway.api.responses import json_response
from gateway.auth.principal import Principal
from gateway.deps import Caller, Gateway
from gateway.errors import Forbidden, InvalidRequest, ModelNotFound
from gateway.limits.estimate import is_conversation, positive_int, prompt_estimates, prompt_tokens
from gateway.metering.accounting import Charge
from gateway.metering.stream_options import force_usage, wanted
from gateway.proxy.call import ProxyCall
from gateway.proxy.collect import stream_request
from gateway.proxy.relay import ProxyResponse
from gateway.proxy.tool_ids import asks_token_ids, with_token_ids
from gateway.proxy.upstream import Reload
from gateway.redis_client import redis_error
from gateway.request_context import info_of
from gateway.routing.balancer import affinity_key
from gateway.routing.engines import ModelPool
from gateway.routing.overload import refuse_if_overloaded
from gateway.state import GatewayState

router = APIRouter(prefix="/v1")
_log = logging.getLogger("llmaas.api")
Check = Callable[[dict[str, Any]], object]


class ModelRequest(NamedTuple):
    """A request body read and checked, and the pool of the model it names (unpacks in this
    order)."""

    received_ms: int  # when it arrived, Unix ms (its usage record's time)
    body: dict[str, Any]
    raw: bytes
    model: str
    pool: ModelPool
    caller: Principal  # as it is once the body is in (read again if the body came slowly)


# A body that took longer than this to come has its caller read again: an operator's change
# made meanwhile (a revoked key, a model taken off its list, a disabled tenant) applies to it.
RECHECK_AFTER_S = 0.01


async def read_model_request(
    request: Request, gw: GatewayState, caller: Principal, route: str, check: Check
) -> ModelRequest:
    """Read and check the body (model first, then the route's own fields); 404 for a model
    the caller may not use or nobody serves. The body comes back with tenant policy applied.
    The key was read with the request's head: a body that came later than RECHECK_AFTER_S has
    it read again (from the cache, which an admin write empties on every replica), so that a
    change made while it came applies to the request (found by review: a request whose body
    came after its key's revocation, however long after, was served and billed)."""
    received_ms = int(time.time() * 1000)
    body, raw = await read_json(request, gw.settings.max_body_bytes)
    if time.perf_counter() - info_of(request.scope).arrived > RECHECK_AFTER_S:
        caller = await gw.auth.principal(request.headers)
    model = require_model(body)
    served = gw.registry.pool(model)
    if served is not None:  # named before the route's checks: their 400s are the model's too
        info_of(request.scope).model = served.name
    check(body)
    if not caller.may_use(model):
        raise ModelNotFound(model)
    if model.startswith("ft:") and gw.adapters is not None:  # loaded if no engine up has it
        pool = await gw.adapters.pool(caller.tenant, model)
    else:
        pool = gw.registry.pool(model)
    if pool is None:
        raise ModelNotFound(model)
    info_of(request.scope).model = pool.name  # a served model: a bounded metrics label
    refuse_if_overloaded(pool, gw.settings.routing, gw.metrics.requests_shed)  # before admission
    raw, body = await gw.policy.apply(route, raw, body, caller)  # tenant policy, every route
    return ModelRequest(received_ms, body, raw, model, pool, caller)


def adapter_reload(gw: GatewayState, caller: Principal, model: str) -> Reload | None:
    """For a fine-tuned model: how its adapter is put back on an engine that forgot it."""
    if gw.adapters is None or not model.startswith("ft:"):
        return None
    return partial(gw.adapters.load_on, caller.tenant, model)


async def _forward(
    request: Request, gw: GatewayState, caller: Principal, route: str, check: Check
) -> ProxyResponse:
    """Read and check the body, then proxy it."""
    received_ms, body, raw, model, pool, caller = await read_model_request(
        request, gw, caller, route, check
    )
    stream = stream_flag(body)
    caller = gw.admission.with_defaults(caller)
    # (embeddings generate nothing: the prompt alone, in `messages` too)
    context = pool.context_length
    tokens = prompt_tokens(body, context) if route == "embeddings" else None
    admission = await gw.admission.admit(caller, body, context, tokens=tokens)
    want, collected = None, None
    ids = asks_token_ids(route, body)  # (usage while vLLM holds tokens back: tool_ids.py)
    engine_raw, engine_body = with_token_ids(raw, body) if ids else (raw, body)
    if stream:  # the engine always reports usage; the client sees only what it asked for
        want = wanted(body)
        raw = force_usage(engine_raw, engine_body)
    else:  # streamed from the engine too, so that an abandoned request is billed exactly
        collected = stream_request(route, engine_raw, engine_body)  # None: sent as it came
    call = ProxyCall(
        route,
        pool,
        raw if collected is None else collected,
        stream,
        n=positive_int(body.get("n")) or 1,
        usage_wanted=want,
        collect=body if collected is not None else None,
        headers={} if admission is None else admission.headers(),
        affinity=_affinity(gw, route, body),
        grammar=grammar_field(body),
        reload=adapter_reload(gw, caller, model),
        token_ids_asked=ids and stream,  # (a collected body holds what the client asked)
    )
    request_id = info_of(request.scope).request_id
    charge = Charge(
        request_id,
        route,
        model,
        stream,
        caller,
        admission,
        received_ms,
        partial(prompt_estimates, body, context),
    )
    return ProxyResponse(gw.proxy, call, gw.accounting.reporter(charge))


def _affinity(gw: GatewayState, route: str, body: dict[str, Any]) -> bytes:
    """The prompt's leading content, for the strategy that routes on it (costs nothing else)."""
    if gw.settings.routing.strategy != "prefix_affinity":
        return b""
    return affinity_key(route, body)


@router.post("/chat/completions", response_model=None, openapi_extra=openapi_bodies.CHAT)
async def chat_completions(request: Request, gw: Gateway, caller: Caller) -> Response:
    return await _forward(request, gw, caller, "chat/completions", require_messages)


@router.post("/completions", response_model=None, openapi_extra=openapi_bodies.COMPLETIONS)
async def completions(request: Request, gw: Gateway, caller: Caller) -> Response:
    batch = gw.settings.limits.max_prompts_per_request
    return await _forward(
        request, gw, caller, "completions", lambda b: require_prompts(b, "prompt", batch)
    )


@router.post("/embeddings", response_model=None, openapi_extra=openapi_bodies.EMBEDDINGS)
async def embeddings(request: Request, gw: Gateway, caller: Caller) -> Response:
    batch = gw.settings.limits.max_prompts_per_request

    def check(body: dict[str, Any]) -> None:
        _one_conversation(body)
        conversation = _conversation_field(body)
        if conversation is not None:  # its parts checked as chat's are
            check_parts(body[conversation], conversation)
        else:
            require_prompts(body, "input", batch)
        _json_encoding(body)

    return await _forward(request, gw, caller, "embeddings", check)


def _conversation_field(body: dict[str, Any]) -> str | None:
    """Where vLLM's embeddings of one chat conversation hold it: `messages` (without `input`)
    or `input` itself (rendered with the chat template, as a chat's prompt); None for prompts."""
    if "messages" in body and "input" not in body:
        require_nonempty_list(body, "messages")
        return "messages"
    return "input" if is_conversation(body.get("input")) else None


# vLLM's binary embeddings: raw floats, with their shapes and usage in a response header
# ("bytes") or nowhere ("bytes_only"). The gateway relays and meters JSON bodies only.
_BINARY_ENCODINGS = ("bytes", "bytes_only")
_JSON_ENCODINGS = ("float", "base64")


def _one_conversation(body: dict[str, Any]) -> None:
    """vLLM's embeddings also take `messages` (or `input`) as a list of conversations, each
    rendered like a chat (its media fetched): the tenant policy reads one conversation, so a
    batch of them passed its media checks unread (an http:// metadata address reached the
    engine)."""
    for field in ("messages", "input"):
        value = body.get(field)
        if not isinstance(value, list):
            continue
        for i, item in enumerate(value):
            if isinstance(item, list) and any(isinstance(m, dict) for m in item):
                raise InvalidRequest(
                    f"A batch of conversations in '{field}' is not accepted: send one "
                    "conversation per request.",
                    param=f"{field}[{i}]",
                    code="unsupported_value",
                )


def _json_encoding(body: dict[str, Any]) -> None:
    """`encoding_format`, if sent: one of the JSON encodings. vLLM's own refusal of another
    value listed the binary ones among those it takes, and a null as 'None'."""
    if "encoding_format" not in body:
        return  # (vLLM's default, float)
    encoding = check_type(body, "encoding_format", str)  # (null: "but got null")
    if encoding in _BINARY_ENCODINGS:
        raise InvalidRequest(
            f"encoding_format '{encoding}' is not supported by this gateway: its usage could "
            "not be metered. Use 'float' or 'base64'.",
            param="encoding_format",
            code="unsupported_value",
        )
    if encoding not in _JSON_ENCODINGS:
        raise InvalidRequest(
            f"Invalid 'encoding_format': {encoding[:64]!r}; expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )


def _model_card(pool: ModelPool) -> dict[str, Any]:
    """OpenAI's model object, plus vLLM's max_model_len and (for a LoRA adapter) parent."""
    card: dict[str, Any] = {
        "id": pool.name,
        "object": "model",
        "created": pool.created,
        "owned_by": "llmaas",
    }
    if pool.context_length is not None:
        card["max_model_len"] = pool.context_length
    if pool.parent is not None:
        card["parent"] = pool.parent
    return card


@router.get("/models", response_model=None)
async def list_models(gw: Gateway, caller: Caller) -> Response:
    """Configured models and, with routing.learn_models, those the engines list; and the
    caller's tenant's fine-tuned models, loaded in an engine or not."""
    cards = {p.name: _model_card(p) for p in gw.registry.pools() if caller.may_use(p.name)}
    for name, record in (await _fine_tuned(gw, caller)).items():
        if caller.may_use(name):  # the same card whether an engine has loaded it or not
            cards[name] = _fine_tuned_card(gw, name, record, caller.tenant)
    return json_response({"object": "list", "data": list(cards.values())})


@router.get("/models/{model_id:path}", response_model=None)
async def get_model(model_id: str, gw: Gateway, caller: Caller) -> Response:
    _named(model_id)
    if not caller.may_use(model_id):
        raise ModelNotFound(model_id)
    record = None
    if model_id.startswith("ft:") and gw.adapters is not None:
        record = await gw.adapters.record(caller.tenant, model_id)
    if record is not None:
        return json_response(_fine_tuned_card(gw, model_id, record, caller.tenant))
    pool = gw.registry.pool(model_id)
    if pool is None:
        raise ModelNotFound(model_id)
    return json_response(_model_card(pool))


@router.delete("/models/{model_id:path}", response_model=None)
async def delete_model(model_id: str, gw: Gateway, caller: Caller) -> Response:
    """Delete one of the tenant's fine-tuned models: unloaded from every engine, its adapter
    removed. A base model the caller can see cannot be deleted (403, as OpenAI answers);
    anything else it cannot see is 404."""
    _named(model_id)
    if not caller.may_use(model_id):
        raise ModelNotFound(model_id)
    fine_tuned = model_id.startswith("ft:")  # (a loaded one has a pool too: its base model's)
    if not fine_tuned and gw.registry.pool(model_id) is not None:
        raise Forbidden(
            f"The model '{model_id}' is a base model served by the gateway and cannot be "
            "deleted; only your fine-tuned models (ft:…) can.",
            param="model",
            code="model_not_deletable",
        )
    if not fine_tuned or gw.adapters is None:
        raise ModelNotFound(model_id)
    if not await gw.adapters.delete(caller.tenant, model_id):
        raise ModelNotFound(model_id)
    return json_response({"id": model_id, "object": "model", "deleted": True})


def _named(model_id: str) -> None:
    """/v1/models/ (a trailing slash) names no model: an unknown path, as every other one."""
    if not model_id:
        raise HTTPException(404)


async def _fine_tuned(gw: GatewayState, caller: Principal) -> dict[str, dict[str, Any]]:
    """The tenant's fine-tuned models' records; none while Redis cannot be read (the list is
    then the served models, the tenant's loaded adapters among them: it was a 503 while the
    same key's chat requests were served, and clients list models before they chat)."""
    if gw.adapters is None:
        return {}
    try:
        return await gw.adapters.store.models(caller.tenant)
    except RedisError as exc:
        _log.warning(
            "fine-tuned models left out of a model list: store (Redis) unavailable",
            extra={"fields": {"tenant": caller.tenant, "error": redis_error(exc)}},
        )
        return {}


def _fine_tuned_card(
    gw: GatewayState, name: str, record: dict[str, Any], tenant: str
) -> dict[str, Any]:
    """Owned by its tenant, created when its job ended, with its base model's context length:
    the card does not change when an engine loads the adapter (whose own listing says
    `llmaas` and the time it was loaded; until 2026-12-05 that one was shown then)."""
    card: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": record.get("created", 0),
        "owned_by": tenant,
    }
    base = record.get("base")
    base_pool = gw.registry.pool(base) if isinstance(base, str) else None
    if base_pool is not None and base_pool.context_length is not None:
        card["max_model_len"] = base_pool.context_length
    card["parent"] = base
    return card
