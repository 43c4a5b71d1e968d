"""What a request may cost in tokens, reserved at admission and settled against real usage."""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4  # a generous average for English with BPE tokenizers; settlement corrects it


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """An estimate of the prompt's tokens (messages, prompt or input)."""
    for field in ("messages", "prompt", "input"):
        if field in body:
            value = body[field]
            if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                return len(value)  # already token ids
            return max(1, _text_chars(value) // CHARS_PER_TOKEN + 1)
    return 1


def reserved_tokens(
    body: dict[str, Any], default_max_tokens: int, context_length: int | None = None
) -> int:
    """Prompt estimate plus the most the engine may generate, times `n`. Without max_tokens the
    default applies, capped by what the model's context leaves after the prompt."""
    prompt = prompt_tokens(body)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        completion = limit
    elif context_length is not None:
        completion = min(default_max_tokens, max(1, context_length - prompt))
    else:
        completion = default_max_tokens
    if "input" in body and "messages" not in body:  # embeddings generate nothing
        completion = 0
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return prompt + completion * choices
