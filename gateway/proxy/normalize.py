"""Bring engine bodies in line with OpenAI's published schema, which strict clients are built from.

vLLM deviates in three ways that break generated clients: error `code` is an integer, some
fields the spec types as a non-nullable object, array or string are sent as `null`, and routes a
model does not serve answer FastAPI's `{"detail": ...}`. Success bodies are otherwise passed on
byte for byte: a body is only re-serialised when a forbidden `null` was actually removed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import ModelNotFound, error_body, field_path
from gateway.proxy.validation_message import field_path_of, validation_message

# Keys whose value may not be null per openai/openai-openapi (CreateChatCompletionResponse,
# CreateChatCompletionStreamResponse, CreateCompletionResponse, CompletionUsage). A nested
# mapping is walked; a one-element list means "each item of this array, with this plan".
# Also vLLM's own `prompt_tokens_details.multimodal_tokens` and `created_cache_tokens` (no OpenAI
# fields): its plain answers send them null, its streams leave them out (exclude_none), so a
# collected answer had none; left out of both, an answer is the body vLLM sends whichever way
# it was asked for.
_Plan = dict[str, Any]
_VLLM_DETAILS: _Plan = {"multimodal_tokens": {}, "created_cache_tokens": {}}
_USAGE: _Plan = {"completion_tokens_details": {}, "prompt_tokens_details": _VLLM_DETAILS}
_CHOICE: _Plan = {
    "message": {"tool_calls": {}, "function_call": {}, "annotations": {}},
    "delta": {"tool_calls": {}, "function_call": {}, "role": {}},
}
_BODY_PLAN: _Plan = {
    "system_fingerprint": {},
    "obfuscation": {},
    "usage": _USAGE,
    "choices": [_CHOICE],
}

# A forbidden key followed by null; a body without one is passed on unparsed (stream token
# frames, which carry only allowed nulls, cost one regex scan).
FORBIDDEN_NULL = re.compile(
    rb'"(?:system_fingerprint|obfuscation|usage|completion_tokens_details|prompt_tokens_details'
    rb'|tool_calls|function_call|annotations|role|multimodal_tokens|created_cache_tokens)"\s*:\s*null'
)

_NOT_SERVED = "The engine serving this model does not support this endpoint."

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # OpenAI's (its 401 invalid_api_key)
    403: "permission_error",
    404: "invalid_request_error",  # OpenAI's, for a 404 too
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _strip(node: dict[str, Any], plan: _Plan) -> bool:
    changed = False
    for key, sub in plan.items():
        if key not in node:
            continue
        value = node[key]
        if value is None:
            del node[key]
            changed = True
        elif isinstance(sub, list) and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    changed |= _strip(item, sub[0])
        elif sub and isinstance(value, dict):
            changed |= _strip(value, sub)
    return changed


def normalize_success(body: bytes) -> bytes:
    """A 2xx JSON body (or one SSE payload) with forbidden nulls removed; else unchanged."""
    if FORBIDDEN_NULL.search(body) is None:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and _strip(data, _BODY_PLAN):
        return orjson.dumps(data)
    return body


def strip_forbidden_nulls(data: dict[str, Any]) -> None:
    """normalize_success for a body not yet serialised (a collected answer): in place."""
    _strip(data, _BODY_PLAN)


def normalize_error(
    status: int, body: bytes, route: str | None = None, grammar: str | None = None
) -> bytes:
    """Any engine error body as OpenAI's error shape, keeping the engine's message (a
    validation error's first complaint, as a sentence naming the field). `grammar`: the
    request's field the engine compiled a grammar from (api/engine_fields.grammar_field)."""
    message, param, code = _parse_error(body, status)
    if status == 400:
        message = _OPERATOR_ADVICE.sub("", message)  # (not the client's to follow)
        message, param = _field_of(message, param, route, grammar)
    if status == 400 and param is not None:
        engine_named = param  # ("logprobs": vLLM's own field; "body.logprobs": the client's)
        message, param = validation_message(message, param)
        if (route, engine_named) in _RENAMED:  # the client's name, in `param` and the message
            param = _RENAMED[(route, engine_named)]
            message = re.sub(rf"\b{re.escape(engine_named)}\b", param, message)
        if param in _CONTEXT_PARAMS:  # vLLM's context-length refusal: OpenAI's code, the field
            param, code = _PROMPT_FIELDS.get(route or "", "messages"), "context_length_exceeded"
    if status == 404:
        message, param, code = _not_found(message, param, code, route)
    type_ = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if code == "model_not_found" or (status == 404 and param == "model"):
        type_ = ModelNotFound.type  # OpenAI's, for a model missing or on a route it lacks
    return orjson.dumps(error_body(message, type_, param=param, code=code))


def _field_of(
    message: str, param: str | None, route: str | None, grammar: str | None
) -> tuple[str, str | None]:
    """A 400's field, where vLLM names none (or only `type`): the message, and `param`."""
    if param is None and grammar is not None and _GRAMMAR.match(message):
        return f"Invalid value for '{grammar}': {message}", grammar
    if param in (None, "type") and _PART_REFUSED.search(message):
        return message, _PROMPT_FIELDS.get(route or "", "messages")  # (vLLM: `type`, or none)
    if param is None:
        param = _named_field(message)
        if _OUT_OF_VOCABULARY.match(message) or _EMPTY_PROMPT.match(message):  # (of the prompt)
            param = _PROMPT_FIELDS.get(route or "")
        head = _DUMP_HEAD.match(message) if param is None else None
        if head is not None:
            return _content_part_error(message, head.end(), route)
    return message, param


def _not_found(
    message: str, param: str | None, code: str | None, route: str | None
) -> tuple[str, str | None, str | None]:
    if route is not None and message == _NOT_SERVED:
        return f"The model's engine does not serve /v1/{route}.", "model", code  # the field
    named = _MODEL_MISSING.match(message)
    if named is not None:  # the gateway's own words: nothing of what else the engine serves
        return ModelNotFound(named.group(1)).message, "model", code or "model_not_found"
    if code is None and param == "model":
        code = "model_not_found"
    if param == "response_id":  # the Responses API's
        code = code or "response_not_found"
        if route == "responses":  # a create's: the id it names is the client's field's
            param = "previous_response_id"
    return message, param, code


# Fields vLLM checks under its own name (its sampling parameters': `param` a bare name): the
# name the client sent them by, per route. A refusal of the client's body names a location in
# it ("body.logprobs", chat's boolean): that field is the client's own, and keeps its name.
_RENAMED: dict[tuple[str | None, str], str] = {
    ("chat/completions", "logprobs"): "top_logprobs",  # chat's count is top_logprobs
    ("responses", "logprobs"): "top_logprobs",
    ("responses", "max_tokens"): "max_output_tokens",
}
# Where a route's prompt is (what a context-length refusal names).
_PROMPT_FIELDS = {"completions": "prompt", "embeddings": "input", "responses": "input"}
# vLLM's context-length refusals: counted in tokens, or (first, for long texts) in characters.
_CONTEXT_PARAMS = ("input_tokens", "input_text")


# vLLM's sampling checks that set no `parameter` ("n must be at least 1, got 0.", "`top_k`
# must be ...") name the field as the message's first word.
_FIELD_FIRST = re.compile(r"`?([a-z][a-z0-9_]*)`? must ")
# vLLM's refusals of a schema, regex, grammar or choice list it cannot compile (structured
# output backends guidance, xgrammar, outlines), which name no field.
_GRAMMAR = re.compile(
    r"Grammar error|Invalid (?:JSON |structural tag )?grammar specification|Failed to transform"
    r"|The provided JSON schema|Error parsing regex|Regex uses unsupported|Error serializing"
)
# vLLM's refusals of a content part: a type it does not read (`file`, `input_file`), with
# `param` "type"; media sent to a text-only model, with none. Both are about the prompt.
_PART_REFUSED = re.compile(r"^Unsupported chat content part type: |is not a multimodal model$")
# vLLM's refusal of a prompt's token id (completions' prompt, embeddings' input).
_OUT_OF_VOCABULARY = re.compile(r"Token id -?\d+ is out of vocabulary")
# vLLM's refusal of one empty prompt among several (`prompt: ["", "hi"]`), naming no field.
_EMPTY_PROMPT = re.compile(r"The (?:decoder |encoder )?prompt cannot be empty")
# vLLM's advice to its operator, in refusals a client gets (`n` over VLLM_MAX_N_SEQUENCES, a
# completions batch over VLLM_MAX_COMPLETION_PROMPTS, an image over VLLM_MAX_IMAGE_PIXELS, more
# images than `--limit-mm-per-prompt`): an engine setting no client can change.
_OPERATOR_ADVICE = re.compile(
    r"\s*(?:To increase this\s+limit, set the VLLM_\w+\s+environment variable"
    r"|Set (?:VLLM_\w+|`--[\w-]+`) to increase this limit)\."
)
# vLLM's refusals of embeddings' `dimensions` (pooling_params.py), which name the model first.
_DIMENSIONS = re.compile(
    r"Model '[^']*' (?:does not support Matryoshka|only supports (?:Matryoshka )?dimensions)"
)
# vLLM's refusal of a pooling request's (embeddings') `truncate_prompt_tokens` over the model's
# length (pooling/base/serving.py), which sets no `parameter`; chat's and completions' set it.
_TRUNCATION_OVER = re.compile(r"truncate_prompt_tokens value is greater than max_model_len")


# vLLM's answer to a content part it cannot read (it validates parts lazily, with pydantic):
# "7 validation errors for ValidatorIterator\n0.ChatCompletionContentPartTextParam.text\n
# Field required [type=missing, input_value=..., input_type=dict]\n    For further ...".
_DUMP_HEAD = re.compile(r"\d+ validation errors? for \w+\n")
_DUMP_FIRST = re.compile(r"([^\n]+)\n\s+([^\n\[]+?)\s*(?:\[[^\n]*)?(?:\n|$)")


def _content_part_error(message: str, start: int, route: str | None) -> tuple[str, str]:
    """The dump's first complaint (after `start`) as one sentence, and the prompt's field as
    `param` (which message holds the part, vLLM does not say)."""
    param = _PROMPT_FIELDS.get(route or "", "messages")
    found = _DUMP_FIRST.match(message, start)
    if found is None:
        return message.split("\n", 1)[0] + ".", param
    where = field_path_of(found.group(1))
    return f"Invalid value for content part {where} of '{param}': {found.group(2)}.", param


def _named_field(message: str) -> str | None:
    """The field a refusal without `param` names first, if it starts by naming one."""
    found = _FIELD_FIRST.match(message)
    if found is not None:
        return found.group(1)
    if _TRUNCATION_OVER.match(message):
        return "truncate_prompt_tokens"
    return "dimensions" if _DIMENSIONS.match(message) else None


def model_missing(body: bytes) -> bool:
    """Whether a 404 body is vLLM's "The model `X` does not exist." (an engine that restarted
    and forgot a LoRA adapter, or no longer serves a model it listed at the last poll)."""
    message, param, _ = _parse_error(body, 404)
    return param == "model" or _MODEL_MISSING.match(message) is not None


# vLLM's "The model `X` does not exist." (with ", Valid aliases: …" after it: the models the
# engine serves, which a key may not be allowed to know).
_MODEL_MISSING = re.compile(r"The model `([^`]*)` does not exist")


def _parse_error(body: bytes, status: int) -> tuple[str, str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or f"The engine answered HTTP {status}."), None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        param = err.get("param")
        code = err.get("code")
        return (
            str(err.get("message") or f"The engine answered HTTP {status}."),
            param if isinstance(param, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(data, dict) and "detail" in data:
        return _detail_message(data["detail"], status), None, None
    return f"The engine answered HTTP {status}.", None, None


def _detail_message(detail: Any, status: int) -> str:
    if isinstance(detail, str):
        if status == 404 and detail == "Not Found":
            return _NOT_SERVED
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = field_path(p for p in first.get("loc", []) if p != "body")
        return f"{loc}: {first.get('msg', 'invalid value')}" if loc else str(first.get("msg"))
    return f"The engine answered HTTP {status}."


def usage_tokens(body: bytes) -> int | None:
    """`usage.total_tokens` of a body or stream payload, if it carries one."""
    if b'"usage"' not in body:
        return None
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return total if isinstance(total, int) else None


def stream_error_status(data: bytes) -> int:
    """The status an engine's in-stream error frame stands for (its integer `code`), else 500."""
    try:
        code = orjson.loads(data)["error"].get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return 500
    return code if isinstance(code, int) and 400 <= code <= 599 else 500
