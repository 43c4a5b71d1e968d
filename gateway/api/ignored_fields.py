"""OpenAI request fields vLLM 0.32 does not read, refused where leaving them out changes the
answer.

vLLM takes a field it does not know and drops it (a debug line in its log, no more). For most of
OpenAI's fields it lacks, that is harmless: without `store`, `metadata`, `prediction`,
`verbosity` or `safety_identifier` the answer is the same. For the fields below it is not: the
client would get the answer to another request (no function offered to the model, no audio, no
search, one sample where it asked for the best of several, no conversation's history), and
nothing would say so. Each is a 400 naming the field and what to send instead.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.limits.estimate import positive_int

_TEXT_ONLY = "the engine answers in text only"
# (vLLM 0.32's chat request has no `best_of`, its completions' one samples `n`: the same answer)
_BEST_OF = (
    "the engine samples 'n' completions and picks none; ask for 'n' completions (with"
    " 'logprobs' to score them) and choose among them"
)

# route -> field -> why the answer would differ, and what to do instead
IGNORED: dict[str, dict[str, str]] = {
    "chat/completions": {
        "functions": (
            "the engine does not read OpenAI's deprecated function calling, and the model would"
            " never see them; send them as 'tools': [{'type': 'function', 'function': {…}}]"
        ),
        "function_call": (
            "the engine does not read OpenAI's deprecated function calling; send 'tool_choice'"
            " ('auto', 'none', 'required' or {'type': 'function', 'function': {'name': …}})"
            " with 'tools'"
        ),
        "audio": f"it asks for spoken output, and {_TEXT_ONLY}",
        "web_search_options": "it asks for a web search, and the engine answers from the model"
        " alone",
        "best_of": _BEST_OF,
    },
    "completions": {"best_of": _BEST_OF},
    "responses": {
        "conversation": (
            "the engine keeps no conversations; chain responses with 'previous_response_id'"
        ),
    },
}


def check_ignored_fields(route: str, body: dict[str, Any]) -> None:
    """Raise a 400 naming the first field of `IGNORED[route]` that asks for something."""
    for name, why in IGNORED.get(route, {}).items():
        if _asks(name, body):
            raise InvalidRequest(
                f"'{name}' is not supported: {why}.", param=name, code="unsupported_parameter"
            )
    if route == "chat/completions":
        _check_modalities(body.get("modalities"))


def _asks(name: str, body: dict[str, Any]) -> bool:
    value = body.get(name)
    if name == "best_of":  # best of n is n: the same request (numbers as vLLM reads them)
        return value is not None and positive_int(value) != (positive_int(body.get("n")) or 1)
    return value is not None


def _check_modalities(modalities: object) -> None:
    if not isinstance(modalities, list):
        return  # (null, or a shape vLLM does not read either: as good as absent)
    for i, modality in enumerate(modalities):
        if modality != "text":
            raise InvalidRequest(
                f"'modalities[{i}]' is not supported: it asks for {modality!r} output, and"
                f" {_TEXT_ONLY}.",
                param=f"modalities[{i}]",
                code="unsupported_parameter",
            )
