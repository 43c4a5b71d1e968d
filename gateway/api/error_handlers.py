"""Every error the application raises, answered in OpenAI's one error shape: the gateway's own
(ApiError), FastAPI's and Starlette's (validation, unknown path, wrong method, unreadable
JSON), Redis away under a route that uses it directly, and the last resort."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from gateway.api import files, fine_tuning
from gateway.auth.api_keys import masked
from gateway.auth.records import ID_PATTERN
from gateway.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    field_path,
)
from gateway.files.records import FILE_ID_PATTERN
from gateway.finetune.jobs import JOB_ID_PATTERN
from gateway.redis_client import redis_error

log = logging.getLogger("llmaas.errors")


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return Response(exc.json(), exc.status_code, exc.headers, "application/json")

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await api_error(request, _first_validation_error(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: ApiError
        if exc.status_code == 404:
            err = NotFound(
                f"Unknown path: {request.method} {masked(request.url.path)}", code="unknown_url"
            )
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            err = MethodNotAllowed(
                f"Method {request.method} is not allowed on {masked(request.url.path)}; "
                f"allowed: {allowed}.",
                code="method_not_allowed",
                headers={"allow": allowed},  # RFC 9110: a 405 lists what the path serves
            )
        elif exc.status_code == 400:  # FastAPI's: a JSON body json.loads could not read
            err = InvalidRequest(  # (one nested past Python's recursion limit, so far)
                f"We could not parse the JSON body of your request: {exc.detail}.",
                code="invalid_json",
            )
        else:
            err = ApiError(str(exc.detail), status=exc.status_code)
        return await api_error(request, err)

    async def unhandled(request: Request, exc: Exception) -> Response:
        """FastAPI's last resort answers in the one error shape too (then re-raises: the
        request context logs the traceback)."""
        return await api_error(request, InternalError("The gateway failed unexpectedly."))

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RedisError)
        return await api_error(request, store_unavailable_error(request.url.path, exc))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RedisError, store_unavailable)
    app.add_exception_handler(Exception, unhandled)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _allowed_methods(request: Request) -> str:
    """The methods the routes of the request's path serve ("DELETE, GET, HEAD"; HEAD where
    GET is, as GatewayApp answers it)."""
    allowed = [m for m in _METHODS if serves(request.app, request.scope, m)]
    if "GET" in allowed and "HEAD" not in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return ", ".join(allowed)


def serves(app: Starlette, scope: Scope, method: str) -> bool:
    """Whether a route would take the request's path under `method`: each one asked (routers
    nest; routes share paths)."""
    probe = {**scope, "method": method}
    return any(route.matches(probe)[0] == Match.FULL for route in app.router.routes)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


# Path ids that cannot name anything: the routes' own 404 for an unknown one, as OpenAI
# answers (not 400 for the id's shape).
_UNKNOWN_IDS: dict[str, Callable[[str], ApiError]] = {
    "job_id": fine_tuning.job_not_found,
    "file_id": files.file_not_found,
}


def _first_validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation errors, as OpenAI-shaped 400s that name the field (a malformed
    job or file id in the path: 404, as an unknown one)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = tuple(first.get("loc", ()))
    if len(where) == 2 and where[0] == "path" and where[1] in _UNKNOWN_IDS:
        return _UNKNOWN_IDS[str(where[1])](str(first.get("input", ""))[:64])
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            f"We could not parse the JSON body of your request: {first.get('msg')}.",
            code="invalid_json",
        )
    where = tuple(p for p in where if p not in ("body", "query", "path"))
    if where[-1:] == ("[key]",) and len(where) >= 3:
        return _bad_key(where, first)
    param = field_path(where) or None
    if param is None:
        # FastAPI reads a body as JSON only under a JSON content type (curl -d sends a form's)
        as_form = isinstance(first.get("input"), bytes)
        return InvalidRequest(
            "The request body must be a JSON object sent with 'Content-Type: application/json'."
            if as_form
            else "The request body is missing or not a JSON object.",
            code="invalid_json",
        )
    return _bad_field(param, first)


def _bad_field(param: str, error: Any) -> ApiError:
    """With the codes and words of the routes that check by hand (body.py)."""
    kind = str(error.get("type", ""))
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return InvalidRequest(f"Invalid '{param}': {_said(error)}.", param=param, code=code)


def _bad_key(where: tuple[Any, ...], error: Any) -> ApiError:
    """A dict's key refused (`metadata`'s, too long): the dict is the param, the key said."""
    param = field_path(where[:-2])
    key = str(where[-2])
    shown = key if len(key) <= 40 else key[:40] + "…"
    return InvalidRequest(
        f"Invalid '{param}': the key '{shown}': {_said(error)}.", param=param, code="invalid_value"
    )


def _said(error: Any) -> str:
    """A pydantic complaint as a client reads it: a validator's own words without pydantic's
    "Value error, " before them; a field the gateway does not support said to be so."""
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "none_required":
        return "not supported here; leave it out"
    if error.get("type") == "too_long" and (error.get("ctx") or {}).get("max_length") == 0:
        return "none are supported here; leave it out"  # (pydantic: "at most 0 items")
    if error.get("type") == "string_pattern_mismatch":  # (pydantic shows its regex)
        pattern = str((error.get("ctx") or {}).get("pattern"))
        return _PATTERNS_SAID.get(pattern, "not of the form this field takes")
    return message.removeprefix("Value error, ")


# The forms the admin and tenant APIs check ids against, in words (pydantic said "String should
# match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'"; found by review).
_PATTERNS_SAID = {
    ID_PATTERN: "1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit",
    FILE_ID_PATTERN: "a file id: 'file-' and 24 hexadecimal digits",
    JOB_ID_PATTERN: "a fine-tuning job id: 'ftjob-' and 24 hexadecimal digits",
}


def store_unavailable_error(path: str, exc: RedisError) -> ServiceUnavailable:
    """Redis too slow, gone or refusing (full) under a route that reads or writes it directly
    (files, fine-tuning, usage, admin, a fine-tuned model's record): a retryable 503, not a
    500, and a line in the log saying which (nothing was logged: a full Redis looked like a
    slow one). The hot routes (hot_routes.py) answer it alike."""
    log.warning(
        "store (Redis) unavailable",
        extra={"fields": {"path": masked(path), "error": redis_error(exc)}},
    )
    return ServiceUnavailable(
        "The gateway's store (Redis) could not be used right now; try again shortly.",
        code="store_unavailable",
        headers={"retry-after": "1"},
    )
