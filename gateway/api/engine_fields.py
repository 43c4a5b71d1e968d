"""Request fields that steer vLLM's internals, refused for tenants, and size bounds on the
fields that make the engine compile or scan something per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.api.body import dump_json
from gateway.errors import InvalidRequest

# vLLM 0.32 fields (chat, completions, responses protocols) a tenant may not set.
REFUSED = {
    "kv_transfer_params": "it steers disaggregated prefill between engines",
    "ec_transfer_params": "it steers encoder-cache transfers between engines",
    "vllm_xargs": "it passes arbitrary arguments to engine plugins",
    "request_id": "the gateway and the engine name requests",
    "chat_template": "a custom template would run on the engine",
    "logits_processors": "it loads code on the engine",
    "prompt_embeds": "precomputed tensors go to the model unchecked",
    "mm_processor_kwargs": "it changes how the engine processes media",
    "media_io_kwargs": "it changes how the engine loads media",
    # Usage comes in the stream's chunks: batched N tokens a chunk, a stream cut short (client
    # gone) would be billed, and charged to its token limits, as if up to N - 1 fewer were made.
    "stream_interval": "it holds back the usage reports a stream cut short is billed by",
}
# vLLM's guided-decoding fields before `structured_outputs`: vLLM 0.32 ignores them (a warning
# in its log), so a request that sends one would come back unconstrained. Each with what says
# the same now.
REMOVED = {
    "guided_json": "'structured_outputs': {'json': …} or 'response_format'",
    "guided_regex": "'structured_outputs': {'regex': …}",
    "guided_choice": "'structured_outputs': {'choice': […]}",
    "guided_grammar": "'structured_outputs': {'grammar': …}",
    "guided_whitespace_pattern": "'structured_outputs': {'whitespace_pattern': …}",
}


@dataclass(frozen=True, slots=True)
class FieldBounds:
    max_schema_bytes: int
    max_logit_bias: int
    max_stop: int


def check_engine_fields(body: dict[str, Any], bounds: FieldBounds) -> None:
    """Raise a 400 naming the first field a tenant may not send, or sends too much of."""
    for name, why in REFUSED.items():
        if name in body:
            raise InvalidRequest(
                f"'{name}' is not accepted: {why}.", param=name, code="unsupported_parameter"
            )
    for name, instead in REMOVED.items():
        if body.get(name) is not None:
            raise InvalidRequest(
                f"'{name}' is no longer read by the engine (vLLM removed it), so the output would"
                f" not be constrained; use {instead} instead.",
                param=name,
                code="unsupported_parameter",
            )
    _cap_size(body.get("structured_outputs"), "structured_outputs", bounds.max_schema_bytes)
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        _cap_size(response_format, "response_format", bounds.max_schema_bytes)
    text = body.get("text")  # the Responses API's structured output: text.format
    if isinstance(text, dict):
        _cap_size(text.get("format"), "text.format", bounds.max_schema_bytes)
    tool_choice = body.get("tool_choice")  # a call that must be made: its tools, a grammar
    if tool_choice == "required" or isinstance(tool_choice, dict):
        _cap_size(body.get("tools"), "tools", bounds.max_schema_bytes)
    _cap_count(body.get("logit_bias"), "logit_bias", bounds.max_logit_bias)
    _cap_count(body.get("stop"), "stop", bounds.max_stop)
    _cap_count(body.get("bad_words"), "bad_words", bounds.max_stop)


def grammar_field(body: dict[str, Any]) -> str | None:
    """The field whose schema, grammar or choices the engine compiles for this request, as
    OpenAI spells it: what an engine's grammar error (which names no field) is about."""
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict):
        named = next((k for k in _STRUCTURED_KINDS if outputs.get(k) is not None), None)
        return "structured_outputs" if named is None else f"structured_outputs.{named}"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _COMPILED_FORMATS:
        return "response_format"
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and text_format.get("type") in _COMPILED_FORMATS:
        return "text.format"
    tool_choice = body.get("tool_choice")  # the tools' parameters, as a grammar the call follows
    if body.get("tools") and (tool_choice == "required" or isinstance(tool_choice, dict)):
        return "tools"
    return None


# vLLM 0.32's StructuredOutputsParams: the kinds of constraint, one per request.
_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "structural_tag", "json_object")
_COMPILED_FORMATS = ("json_schema", "json_object", "structural_tag")


def _cap_size(value: object, name: str, max_bytes: int) -> None:
    if value is None:
        return
    size = len(dump_json(value, name))
    if size > max_bytes:
        raise InvalidRequest(
            f"'{name}' is {size} bytes serialised; at most {max_bytes} are accepted.",
            param=name,
            code="too_large",
        )


def _cap_count(value: object, name: str, limit: int) -> None:
    if isinstance(value, dict | list) and len(value) > limit:
        raise InvalidRequest(
            f"'{name}' has {len(value)} entries; at most {limit} are accepted.",
            param=name,
            code="too_many",
        )
