"""Reading request bodies: size limit, JSON parse, and checks of the few fields the gateway needs.

The gateway forwards the body bytes untouched, so engine-specific fields pass through; it only
checks what it must understand itself, and names the field when it refuses.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gateway import exact_json
from gateway.api.body_encoding import content_encoding, decode_body
from gateway.api.inflight import charge_decoded
from gateway.errors import InvalidRequest, PayloadTooLarge

_TYPE_NAMES = {
    str: "a string",
    list: "an array",
    dict: "an object",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


# A UTF-8 byte order mark before the JSON (Windows tools write one): skipped, as vLLM does.
UTF8_BOM = b"\xef\xbb\xbf"
# Content types of a form: a body sent as one is not read as JSON (any other type is, as a
# missing one: clients that send JSON as text/plain are served).
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


async def read_json(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """The parsed body and its raw bytes (decoded, if it came compressed); 413 past `max_bytes`,
    400 when it is not a JSON object, or comes as a form (`curl -d` without a JSON content
    type, as the FastAPI routes refuse it: error_handlers.py)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in FORM_TYPES:
        raise InvalidRequest(
            "The request body must be a JSON object sent with 'Content-Type: application/json'.",
            code="invalid_json",
        )
    raw = await _read_body(request, max_bytes)
    if raw.startswith(UTF8_BOM):  # (what vLLM, the admin API and RFC 8259 parsers accept)
        raw = raw[len(UTF8_BOM) :]
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = exact_json.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "not valid UTF-8" in str(exc):  # orjson spoke of surrogates for Latin-1 or UTF-16
            raise InvalidRequest(
                "The request body is not UTF-8 text: JSON bodies must be encoded as UTF-8.",
                code="invalid_json",
            ) from exc
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from exc
    except exact_json.TooDeep as exc:
        raise _too_deep(None) from exc
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {_describe(body)}.", code="invalid_json"
        )
    return body, raw


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body's bytes, decoded if it came compressed; 413 past `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    wire = b"".join(chunks)
    raw = decode_body(wire, content_encoding(request.scope["headers"]), max_bytes)
    if raw is not wire:  # (decoded: the bodies in flight count what it decoded to)
        charge_decoded(request.scope, len(wire), len(raw))
    return raw


def dump_json(value: object, param: str | None = None) -> bytes:
    """A value read from a request body, serialised again (every integer as it came): orjson
    reads arrays and objects nested up to 1,024 levels deep but writes at most 254, so a body
    nested deeper than that is a 400 (`param` names the field being written, if it is not the
    whole body), never a 500."""
    try:
        return exact_json.dumps(value)
    except exact_json.TooDeep as exc:
        raise _too_deep(param) from exc


def _too_deep(param: str | None) -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests arrays and objects too deeply: at most "
        f"{exact_json.MAX_DEPTH} levels are accepted.",
        param=param,
        code="invalid_json",
    )


def too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than the limit of {max_bytes} bytes.",
        code="request_too_large",
    )


def _describe(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def require(body: dict[str, Any], field: str, *types: type, path: str | None = None) -> Any:
    """The value of a required field, checked against the accepted JSON types. `path`: how
    the request names it, if `body` is nested in it (default: `field`)."""
    if field not in body or body[field] is None:
        name = path or field
        raise InvalidRequest(
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    return check_type(body, field, *types, path=path)


def optional(body: dict[str, Any], field: str, *types: type) -> Any:
    if body.get(field) is None:
        return None
    return check_type(body, field, *types)


def check_type(body: dict[str, Any], field: str, *types: type, path: str | None = None) -> Any:
    value = body[field]
    # bool is an int in Python but not in JSON.
    is_json_bool = isinstance(value, bool)
    if (is_json_bool and bool not in types) or not isinstance(value, types):
        name = path or field
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise InvalidRequest(
            f"Invalid type for '{name}': expected {expected}, but got {_describe(value)} instead.",
            param=name,
            code="invalid_type",
        )
    return value


def require_model(body: dict[str, Any]) -> str:
    model: str = require(body, "model", str)
    if not model:
        raise InvalidRequest(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    return model


def require_nonempty_list(body: dict[str, Any], field: str) -> list[Any]:
    value: list[Any] = require(body, field, list)
    if not value:
        raise InvalidRequest(
            f"Invalid '{field}': empty array. Expected an array with minimum length 1.",
            param=field,
            code="empty_array",
        )
    return value


# The content parts OpenAI defines, and what the field named by their type holds. vLLM reads
# parts only when it renders the prompt, and answers a broken one with pydantic's dump of every
# union member it tried, naming no message; other part types are vLLM's to judge.
_PART_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "text": ("text", (str,)),
    "refusal": ("refusal", (str,)),
    "image_url": ("image_url", (dict, str)),
    "input_audio": ("input_audio", (dict,)),
    "file": ("file", (dict,)),
}


def require_messages(body: dict[str, Any]) -> list[Any]:
    """Chat's `messages`: a non-empty array, whose content parts of OpenAI's types carry the
    field their type names (a 400 naming `messages[i].content[j].<field>`); and the bounds of
    the fields vLLM renames before it checks them (its refusal would name its own field)."""
    _check_renamed_bounds(body)
    messages = require_nonempty_list(body, "messages")
    check_parts(messages, "messages")
    return messages


def check_parts(messages: list[Any], field: str) -> None:
    """The content parts of chat-style `messages` (chat's, or a conversation embeddings take)
    carry the field their type names: a 400 naming `<field>[i].content[j].<type>`."""
    _check_parts(messages, field, _PART_FIELDS)


# The Responses API's text parts and the field that holds their string (vLLM's refusal of
# another named no field; the simulator answered 500).
_RESPONSE_PART_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "input_text": ("text", (str,)),
    "output_text": ("text", (str,)),
    "reasoning_text": ("text", (str,)),
    "refusal": ("refusal", (str,)),
}


def check_response_parts(items: list[Any]) -> None:
    """The text parts of a Responses `input`'s items hold a string: a 400 naming
    `input[i].content[j].text`."""
    _check_parts(items, "input", _RESPONSE_PART_FIELDS)


def _check_parts(
    items: list[Any], field: str, fields: dict[str, tuple[str, tuple[type, ...]]]
) -> None:
    """Each content part of `items` whose type `fields` names carries that type's field, of
    its types."""
    for i, item in enumerate(items):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind in fields:  # (a list is unhashable)
                    name, types = fields[kind]
                    require(part, name, *types, path=f"{field}[{i}].content[{j}].{name}")


# Chat fields vLLM checks under another name: `max_completion_tokens` as its `max_tokens`, and
# `top_logprobs` as its `logprobs` (once streaming has begun: an error frame). Bounds: OpenAI's.
_RENAMED_BOUNDS = {"max_completion_tokens": (1, None), "top_logprobs": (None, 20)}


def _check_renamed_bounds(body: dict[str, Any]) -> None:
    for field, (low, high) in _RENAMED_BOUNDS.items():
        value = body.get(field)
        if type(value) is not int:
            continue
        if low is not None and value < low:
            raise InvalidRequest(
                f"Invalid '{field}': integer below minimum value. Expected a value >= {low}, "
                f"but got {value} instead.",
                param=field,
                code="integer_below_min_value",
            )
        if high is not None and value > high:
            raise InvalidRequest(
                f"Invalid '{field}': integer above maximum value. Expected a value <= {high}, "
                f"but got {value} instead.",
                param=field,
                code="integer_above_max_value",
            )


def stream_flag(body: dict[str, Any]) -> bool:
    stream = optional(body, "stream", bool)
    options = optional(body, "stream_options", dict)
    if options is not None:  # read to meter the stream: a flag must be what it says
        for flag in ("include_usage", "continuous_usage_stats"):
            if options.get(flag) is not None:
                check_type(options, flag, bool, path=f"stream_options.{flag}")
    return bool(stream)


_PROMPT_SHAPES = (
    "a string, an array of strings, an array of integer token ids, "
    "or an array of non-empty token-id arrays"
)


def require_prompts(body: dict[str, Any], field: str, max_prompts: int) -> None:
    """Completions' `prompt` or embeddings' `input`: one prompt (a string or token ids), or a
    batch of at most `max_prompts` (strings, or token-id arrays). The engine would refuse any
    other shape less clearly, and the token estimate relies on it."""
    value = require(body, field, str, list)
    if isinstance(value, str):
        return
    kinds = set(map(type, value))  # C speed: a 4 MiB body of token ids checks in ~20 ms
    if kinds == {int}:
        return
    if not value:
        raise InvalidRequest(
            f"Invalid '{field}': empty array. Expected {_PROMPT_SHAPES}.",
            param=field,
            code="empty_array",
        )
    if len(value) > max_prompts:
        raise InvalidRequest(
            f"Too many prompts in '{field}': {len(value)}, more than the {max_prompts} allowed "
            "in one request. Split the batch over several requests.",
            param=field,
            code="too_many_prompts",
        )
    if kinds == {str} or (kinds == {list} and all(_token_ids(item) for item in value)):
        return
    raise InvalidRequest(
        f"Invalid '{field}': expected {_PROMPT_SHAPES}, without mixing them.",
        param=field,
        code="invalid_type",
    )


def _token_ids(item: list[Any]) -> bool:
    return bool(item) and set(map(type, item)) == {int}
