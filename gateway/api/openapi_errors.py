"""The error answers /openapi.json declares: OpenAI's one shape, for every /v1 and /admin/v1
operation.

FastAPI declares a 422 `{"detail": [...]}` on every operation with a parameter or a body, which
the gateway never sends (its validation errors are 400s in OpenAI's shape, error_handlers.py),
and no other error: a client generated from the document expected the wrong body, and the
schemathesis run (tests/integration/test_schemathesis.py) could not check an error's. The 422s
go; each operation's `default` answer is the error object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

API_PREFIXES = ("/v1/", "/admin/v1/")
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_ANSWER = {
    "description": "An error, in OpenAI's shape (README.md, Errors)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}
_FASTAPIS = ("HTTPValidationError", "ValidationError")  # the 422's schemas


def declare_errors(app: FastAPI) -> None:
    """Make `app.openapi()` declare the gateway's error answers (built once, as FastAPI's)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with_errors(build())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def with_errors(document: dict[str, Any]) -> None:
    """`document` (FastAPI's, in place) with the error answers the gateway gives."""
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            answers.pop("422", None)
            if path.startswith(API_PREFIXES):
                answers["default"] = _ERROR_ANSWER
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPIS:
        schemas.pop(name, None)
    schemas["ErrorResponse"] = ERROR_SCHEMA
