"""The check of a `fine-tune` upload: JSONL, one chat example per line (OpenAI's chat format).

Run on the uploaded bytes before the file is stored, so a job never starts on a dataset the
trainer would choke on; the first fault is reported with its line number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

# What the trainer learns from (gateway/finetune/train_lora.py); tool calls are not trained yet.
ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 4 * 1024 * 1024
# Nesting an example may have: the trainer reads lines with Python's json, which gives up
# near 1,000 levels (a chat example needs 4).
MAX_DEPTH = 100
UTF8_BOM = b"\xef\xbb\xbf"


_NO_TOOLS = (
    "tool and function calls are not trained yet (an assistant turn that calls one would be "
    "learnt as its text alone)."
)


class FileFormatError(ValueError):
    """What is wrong with the file, and where."""


def check_chat_jsonl(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> int:
    """The number of examples; FileFormatError names the first bad line."""
    examples = 0
    with path.open("rb") as handle:
        number = 0
        while line := handle.readline(max_line_bytes + 1):
            number += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise FileFormatError(f"Line {number} is longer than {max_line_bytes} bytes.")
            if number == 1:  # a UTF-8 byte order mark, as Windows editors write, is not text
                line = line.removeprefix(UTF8_BOM)
            if not line.strip():
                continue
            _check_example(number, line)
            examples += 1
    if examples == 0:
        raise FileFormatError(
            "The file has no examples: expected JSONL, one JSON object with a 'messages' "
            "array per line."
        )
    return examples


def _check_example(number: int, line: bytes) -> None:
    where = f"Line {number}"
    example = _load(where, line)
    for tools in ("tools", "functions"):
        if example.get(tools):
            raise FileFormatError(f"{where}: '{tools}': {_NO_TOOLS}")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        problem = "is missing" if messages is None else "must be a non-empty array"
        raise FileFormatError(f"{where}: 'messages' {problem} (chat format).")
    learned = False
    for i, message in enumerate(messages):
        _check_message(f"{where}, messages[{i}]", message)
        trained = message["role"] == "assistant" and message.get("weight", 1) == 1
        if trained and i == 0:
            raise FileFormatError(
                f"{where}, messages[0]: an assistant message to learn from cannot come first "
                "(nothing asks for it): start with a system or user message, or give it "
                "'weight': 0."
            )
        learned = learned or trained
    if not learned:
        raise FileFormatError(
            f"{where} has no assistant message to learn from (one without 'weight': 0)."
        )


def _load(where: str, line: bytes) -> dict[str, Any]:
    """The line's JSON object (UTF-8, within MAX_DEPTH)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{where} is not UTF-8 (at byte {exc.start + 1}).") from None
    try:
        example = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise FileFormatError(
            f"{where} is not valid JSON (column {exc.colno}: {exc.msg})."
        ) from exc
    if not isinstance(example, dict):
        raise FileFormatError(f"{where} must be a JSON object with a 'messages' array.")
    if _depth(example) > MAX_DEPTH:
        raise FileFormatError(f"{where} is nested deeper than {MAX_DEPTH} levels.")
    return example


def _check_message(where: str, message: Any) -> None:
    if not isinstance(message, dict):
        raise FileFormatError(f"{where} must be an object with 'role' and 'content'.")
    role = message.get("role")
    if "role" not in message:
        raise FileFormatError(f"{where}: 'role' is missing ({', '.join(ROLES)}).")
    if role not in ROLES:
        raise FileFormatError(f"{where}: 'role' must be one of {', '.join(ROLES)}, not {role!r}.")
    for calls in ("tool_calls", "function_call"):
        if message.get(calls):
            raise FileFormatError(f"{where}: '{calls}': {_NO_TOOLS}")
    weight = message.get("weight", 1)  # OpenAI's switch: 0 keeps a message out of the loss
    if isinstance(weight, bool) or weight not in (0, 1):
        raise FileFormatError(f"{where}: 'weight' must be 0 or 1.")
    content = message.get("content")
    if isinstance(content, str):
        return
    if isinstance(content, list) and all(_is_text_part(p) for p in content):
        return
    raise FileFormatError(f"{where}: 'content' must be a string or an array of text parts.")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _is_text_part(part: Any) -> bool:
    return (
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    )
