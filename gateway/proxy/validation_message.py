"""vLLM's refusal of a body its schema does not take, as one sentence naming the field as OpenAI
spells it: vLLM answers pydantic's list of errors, one repr per line, every branch of every
union among them ("2 validation errors:\n  {'type': ..., 'loc': 'body.max_tokens', 'msg': ...,
'input': ...}\n  ..."), and names the field by pydantic's location
("body.messages.0.ChatCompletionDeveloperMessageParam"). Read by normalize.normalize_error.
"""

from __future__ import annotations

import ast
import re
from typing import Any

# vLLM's answer to a body its schema refuses: "2 validation errors:\n  {'type': ..., 'loc':
# 'body.max_tokens', 'msg': ..., 'input': ...}\n  ..." (one repr of pydantic's error per line).
_VALIDATION_HEAD = re.compile(r"\d+ validation errors?:\n")


def validation_message(message: str, param: str) -> tuple[str, str]:
    """vLLM's validation error as a sentence naming the field, and `param` as OpenAI spells a
    field ("messages[0]", not "body.messages.0.ChatCompletionDeveloperMessageParam")."""
    field = field_path_of(param)
    if not _VALIDATION_HEAD.match(message):
        return message, field
    lines = message.split("\n", _COMPLAINTS_READ + 1)[1 : _COMPLAINTS_READ + 1]
    error = _complaint(lines[0])
    if error is None:
        return message, field
    if str(error.get("type", "")).endswith("_type"):
        deeper = _deeper(error, lines[1:])
        if deeper is not None:
            error, field = deeper, field_path_of(deeper["loc"])
    elif (union := _other_branch(error)) is not None:
        taken = _taken_branch(union, lines[1:])
        if taken is not None:
            error, field = taken, field_path_of(taken["loc"])
    if error.get("type") == "missing":
        return f"Missing required parameter: '{field}'.", field
    return f"Invalid value for '{field}': {error['msg']}{_got(error)}.", field


# Complaints only a value that is not a string gets. vLLM writes such a value as str(value)
# ('None', 'True', '5'), which quoted would read as a string the client never sent: it is
# shown as the JSON the client did send (null, true, 5).
_NOT_A_STRING = frozenset({"string_type", "int_type", "float_type", "bool_type", "int_from_float"})
_JSON_WORDS = {"None": "null", "True": "true", "False": "false"}


def _got(error: dict[str, Any]) -> str:
    """ " (got …)" for the complaint's input, or nothing when it is not worth quoting."""
    got = error.get("input")
    if not _shown(got):
        return ""
    if isinstance(got, str) and error.get("type") in _NOT_A_STRING:
        return f" (got {_JSON_WORDS.get(got, got)})"
    return f" (got {got!r})"


def _shown(got: object) -> bool:
    """Whether a complaint's `input` is worth quoting: a short value, not vLLM's stand-in for
    a list or an object ("<list of 5 items>")."""
    if not isinstance(got, (str, int, float)) or len(repr(got)) > 60:
        return False
    return not (isinstance(got, str) and _STAND_IN.fullmatch(got))


_STAND_IN = re.compile(r"<(?:list|dict) of \d+ items?>")

# Complaints read for one inside the first's field (vLLM lists every branch of every union).
_COMPLAINTS_READ = 64


def _complaint(line: str) -> dict[str, Any] | None:
    """One line of vLLM's list of pydantic errors, if it is one."""
    try:
        error = ast.literal_eval(line.strip())  # (a literal only: nothing is run)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(error, dict) or not isinstance(error.get("msg"), str):
        return None
    return error


def _deeper(first: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    """The first complaint inside the field of `first`, a value of the wrong type for one
    branch of a union (`input` is not a string), when another branch took it and found what
    is wrong inside (`input[0].content` is missing) or with it (`stop`, a list, has more than
    4 items)."""
    loc = first.get("loc")
    if not isinstance(loc, str):
        return None
    for line in lines:
        error = _complaint(line)
        if error is None:
            continue
        at = str(error.get("loc", ""))
        if at.startswith(loc + ".") or (
            at == loc and not str(error.get("type", "")).endswith("_type")
        ):
            return error
    return None


def _other_branch(error: dict[str, Any]) -> str | None:
    """The union's location, if `error` is one branch refusing the value's `type` (as
    'body.text.format.ResponseFormatText.type' refuses "json_schema"): another branch, the one
    of that type, says what is wrong with the value."""
    loc = error.get("loc")
    if error.get("type") != "literal_error" or not isinstance(loc, str):
        return None
    union, _, tail = loc.rpartition(".")
    union, _, branch = union.rpartition(".")
    return union if tail == "type" and branch[:1].isupper() else None


def _taken_branch(union: str, lines: list[str]) -> dict[str, Any] | None:
    """The first complaint of the union at `union` that is not a branch refusing the type: the
    branch of the value's type, and what it found wrong ("text.format.name" missing)."""
    for line in lines:
        error = _complaint(line)
        if error is None or _other_branch(error) is not None:
            continue
        loc = str(error.get("loc", ""))
        branch = loc[len(union) + 1 :] if loc.startswith(union + ".") else ""
        if branch[:1].isupper():
            return error
    return None


def field_path_of(loc: str) -> str:
    """A pydantic location (body.tools.0.function.name) as OpenAI names the field
    (tools[0].function.name): no "body", indexes in brackets, no union branch's model name."""
    path = ""
    for part in loc.split("."):
        if part.isdigit():
            path += f"[{part}]"
        elif part and part != "body" and not part[0].isupper():
            path += f".{part}" if path else part
    return path or loc
