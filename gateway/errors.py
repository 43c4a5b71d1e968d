"""One error hierarchy, rendered as OpenAI's body {"error": {message, type, param, code}}."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import orjson


class ApiError(Exception):
    """An error a client sees. Subclasses fix the status and OpenAI `type`."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        if status is not None:
            self.status_code = status
        else:
            self.status_code = self.status

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"  # OpenAI's own, for its 401 invalid_api_key too


class Forbidden(ApiError):
    status = 403
    type = "permission_error"


class NotFound(ApiError):
    """A 404, of OpenAI's type for it (its "No such File object" is an invalid_request_error;
    the gateway's files and jobs said not_found_error, its models the other)."""

    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"


class RateLimited(ApiError):
    """OpenAI's 429: its `type` says which limit refused ("requests" or "tokens")."""

    status = 429
    type = "requests"

    def __init__(
        self, message: str, *, kind: str, scope: str, limit_kind: str, **rest: Any
    ) -> None:
        super().__init__(message, **rest)
        self.kind = kind  # the OpenAI type: requests | tokens
        self.scope = scope  # key | tenant
        self.limit_kind = limit_kind  # requests | tokens | concurrency

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, param=self.param, code=self.code)


def tenant_at_most(message: str, *, limit_kind: str, code: str) -> RateLimited:
    """A tenant holds as many of something as it may (files, their bytes, active jobs): a 429
    that no retry mends, so `x-should-retry: false` (OpenAI's SDKs retry a 429 otherwise: an
    upload would be sent whole again)."""
    return RateLimited(
        message,
        kind="requests",
        scope="tenant",
        limit_kind=limit_kind,
        code=code,
        headers={"x-should-retry": "false"},
    )


class InternalError(ApiError):
    status = 500
    type = "server_error"


class BadGateway(ApiError):
    status = 502
    type = "upstream_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"


def no_redis(subject: str) -> ServiceUnavailable:
    """What a route that keeps its state in Redis answers on a gateway configured without one:
    `x-should-retry: false`, as no wait makes one (the SDKs retried it)."""
    return ServiceUnavailable(
        f"{subject} needs Redis (redis_url), and none is configured.",
        code="no_redis",
        headers={"x-should-retry": "false"},
    )


def engine_unavailable() -> ServiceUnavailable:
    """No engine of the model is up, or none could be reached: the proxy's, and a fine-tuned
    model's whose base model has no engine up (its adapter could not be tried anywhere)."""
    return ServiceUnavailable(
        "No engine serving this model is reachable right now; try again shortly.",
        code="engine_unavailable",
        headers={"retry-after": "1"},
    )


class GatewayTimeout(ApiError):
    status = 504
    type = "timeout"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def field_path(loc: Iterable[str | int]) -> str:
    """A pydantic location as OpenAI's `param` names the field: list indexes in brackets
    (`media_hosts[0]`, `models[0].engines[1]`), object members after dots."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return path.removeprefix(".")
