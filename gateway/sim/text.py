"""Deterministic prompts, completions and embeddings: pure functions, no model.

Token counting (what the simulator reports in `usage`, and what tests may recompute):

* a text prompt (completions `prompt`, embeddings `input`) costs ``1 + words(text)``:
  one BOS token plus one token per whitespace-separated word (``str.split()``);
* a token-id prompt (a list of ints) costs ``len(ids)``;
* a chat conversation costs ``sum(4 + words(content) for each message) + 2``: four template
  tokens around every message and two that open the assistant's reply. A message's content is
  its string, or the ``text`` of its ``{"type": "text"}`` parts joined by spaces; ``None`` is
  empty.

A completion is the word list below, cycled from an offset given by a stable hash (BLAKE2b, not
``hash()``) of the prompt text (for chat: one ``"role: content"`` line per message, joined by
newlines; for token ids: the ids joined by spaces). One token is one word with its leading
space, so `n` tokens are the first `n` of a longer completion of the same prompt. Choice `i` of
a request starts ``i * 7`` words further on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

WORDS: Final = (
    "the", "engine", "answers", "every", "request", "with", "a", "steady", "stream", "of",
    "simulated", "tokens", "while", "gateway", "counts", "them", "for", "billing", "and",
    "limits", "cache", "blocks", "fill", "as", "batches", "grow", "until", "last", "word",
    "arrives", "on", "time",
)  # fmt: skip
TOKENS: Final = tuple(f" {word}" for word in WORDS)
CHAT_TOKENS_PER_MESSAGE: Final = 4
CHAT_REPLY_TOKENS: Final = 2
BOS_TOKENS: Final = 1
CHOICE_STRIDE: Final = 7


class PromptError(ValueError):
    """The request's prompt is malformed; the message names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str  # what the completion or embedding is derived from
    tokens: int  # what it costs in usage.prompt_tokens


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def words(text: str) -> int:
    return len(text.split())


def completion_tokens(prompt_text: str, count: int, choice: int = 0) -> list[str]:
    """The first `count` tokens of the completion of `prompt_text` (choice `choice`)."""
    start = (stable_hash(prompt_text) + choice * CHOICE_STRIDE) % len(TOKENS)
    laps = (start + count) // len(TOKENS) + 1
    return list((TOKENS * laps)[start : start + count])


def embedding(text: str, dim: int) -> list[float]:
    """A unit-length vector of `dim` floats derived from `text`."""
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    values = [int.from_bytes(raw[i : i + 4], "big") / 2**31 - 1.0 for i in range(0, 4 * dim, 4)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def message_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
            if isinstance(part.get("text"), str)
        ]
        return " ".join(parts)
    raise PromptError("messages: content must be a string, a list of parts or null", "messages")


def chat_prompt(messages: object) -> Prompt:
    """The prompt of a chat request's `messages`, validated."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages: a non-empty list of messages is required", "messages")
    lines: list[str] = []
    tokens = CHAT_REPLY_TOKENS
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise PromptError("messages: every message needs a string 'role'", "messages")
        text = message_text(message.get("content"))
        lines.append(f"{message['role']}: {text}")
        tokens += CHAT_TOKENS_PER_MESSAGE + words(text)
    return Prompt("\n".join(lines), tokens)


def text_prompts(value: object, field: str) -> list[Prompt]:
    """Completions' `prompt` or embeddings' `input`: a str, or a list of str, int or int lists."""
    if isinstance(value, str):
        return [_text_prompt(value)]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [_text_prompt(item) for item in value]
        if _is_token_ids(value):
            return [_token_prompt(value)]
        if all(isinstance(item, list) and item and _is_token_ids(item) for item in value):
            return [_token_prompt(item) for item in value]
    raise PromptError(
        f"{field}: expected a string, a list of strings or a list of token ids", field
    )


def count_prompt_tokens(body: Mapping[str, object]) -> int:
    """usage.prompt_tokens the simulator reports for a chat, completions or embeddings body."""
    if "messages" in body:
        return chat_prompt(body["messages"]).tokens
    field = "prompt" if "prompt" in body else "input"
    return sum(prompt.tokens for prompt in text_prompts(body.get(field), field))


def _text_prompt(text: str) -> Prompt:
    return Prompt(text, BOS_TOKENS + words(text))


def _token_prompt(ids: Sequence[object]) -> Prompt:
    return Prompt(" ".join(str(token) for token in ids), len(ids))


def _is_token_ids(items: Sequence[object]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in items)
