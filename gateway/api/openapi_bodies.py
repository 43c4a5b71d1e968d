"""Request bodies of the OpenAI routes, for /openapi.json only.

The routes read their JSON by hand (engine-specific fields pass through untouched), so FastAPI
cannot see a body: these declare the fields the gateway itself checks, and allow any other, so
clients and fuzzers (tests/integration/test_schemathesis.py) know what to send.
"""

from __future__ import annotations

from typing import Any

_MAX_TOKENS: dict[str, Any] = {"type": "integer", "minimum": 1}
_TEXT: dict[str, Any] = {"type": "string"}


def _body(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["model", *required],
        "properties": {"model": _TEXT, **properties},
        "additionalProperties": True,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": _TEXT},
}
CHAT = _body(
    ["messages"],
    messages={"type": "array", "items": _MESSAGE, "minItems": 1},
    max_tokens=_MAX_TOKENS,
    stream={"type": "boolean"},
)
COMPLETIONS = _body(["prompt"], prompt=_TEXT, max_tokens=_MAX_TOKENS, stream={"type": "boolean"})
EMBEDDINGS = _body(["input"], input=_TEXT)
RESPONSES = _body(
    ["input"],
    input=_TEXT,
    instructions=_TEXT,
    max_output_tokens=_MAX_TOKENS,
    stream={"type": "boolean"},
)
