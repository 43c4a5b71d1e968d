"""What a request may cost in tokens, reserved at admission and settled against real usage.

A batch costs what all its prompts cost: completions' `prompt` and embeddings' `input` may carry
many prompts (a list of strings, or a list of token-id lists), and on /v1/completions each prompt
gets its own completion allowance, `n` times. The body's shape is checked before admission
(gateway/api/body.py); what is counted here assumes it. No prompt is counted past what the
engine reads of it: its `truncate_prompt_tokens`, and the model's context (a longer one is the
engine's 400, which a tpm limit must not refuse first as too large).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

CHARS_PER_TOKEN = 4  # a generous average for English with BPE tokenizers; settlement corrects it
# What a chat template adds around the text: each message's role and delimiters
# ("<|im_start|>user\n … <|im_end|>\n": 4-5 tokens), and the assistant's turn it opens for the
# answer. Without them a short chat was reserved a third of what the engine counted (8 tokens
# for "hello there" through SmolLM2's template, 3 estimated).
MESSAGE_TOKENS = 4
REPLY_TOKENS = 3
# What a tokenizer adds to a text prompt: an embedding model's [CLS] and [SEP] (BERT), a
# generative model's BOS (an EOS too for some). Without them 2,048 one-letter inputs were
# estimated 2,048 tokens and admitted on a tpm of 3,000; the engine counted 6,144.
SPECIAL_TOKENS = 2


def text_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def prompt_sizes(value: Any) -> list[int]:
    """Estimated tokens of each prompt in a completions `prompt` or an embeddings `input`: a
    string, a list of strings, a list of token ids (one prompt) or a list of token-id lists
    (taken as they are: the engine adds no special tokens to token ids)."""
    if isinstance(value, str):
        return [text_tokens(value) + SPECIAL_TOKENS]
    if not isinstance(value, list) or not value:
        return [1]
    if isinstance(value[0], int):  # token ids
        return [len(value)]
    return [_one_prompt(item) for item in value]


def _one_prompt(item: Any) -> int:
    if isinstance(item, str):
        return text_tokens(item) + SPECIAL_TOKENS
    return max(1, len(item)) if isinstance(item, list) else 1


def _content_chars(content: Any) -> int:
    """A message's text: a string, or the `text` of its parts."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    texts = (part.get("text") for part in content if isinstance(part, dict))
    return sum(len(text) for text in texts if isinstance(text, str))


def chat_tokens(messages: Any) -> int:
    """An estimate of the tokens of a chat request's `messages`: their text content, and what
    the chat template adds around each and for the reply."""
    if not isinstance(messages, list):
        return 1
    chars = sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return chars // CHARS_PER_TOKEN + 1 + MESSAGE_TOKENS * len(messages) + REPLY_TOKENS


def is_conversation(value: Any) -> bool:
    """Whether `value` is one chat conversation (a non-empty list of messages with a role), as
    vLLM's embeddings take one in `input` too."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m for m in value)
    )


def prompt_estimates(body: dict[str, Any], context_length: int | None = None) -> list[int]:
    """An estimate of each prompt's tokens, in the order the engine numbers them (one for a
    chat's messages or a conversation), none past what the engine reads (`_prompt_cap`)."""
    estimates = _uncapped(body)
    cap = _prompt_cap(body, context_length)
    return estimates if cap is None else [min(tokens, cap) for tokens in estimates]


def _uncapped(body: dict[str, Any]) -> list[int]:
    if "messages" in body:
        return [chat_tokens(body["messages"])]
    if is_conversation(body.get("input")):  # embeddings of one conversation
        return [chat_tokens(body["input"])]
    for field in ("prompt", "input"):
        if field in body:
            return prompt_sizes(body[field])
    return [1]


def _prompt_cap(body: dict[str, Any], context_length: int | None) -> int | None:
    """The most tokens the engine reads of one prompt: vLLM's `truncate_prompt_tokens` k (it
    keeps k tokens: a 3,000-word prompt truncated to 5 was reserved 4,511 tokens and refused as
    too large) and the model's context (longer is refused, or truncated with k = -1)."""
    caps = (positive_int(body.get("truncate_prompt_tokens")), context_length)
    return min((cap for cap in caps if cap is not None), default=None)


def prompt_tokens(body: dict[str, Any], context_length: int | None = None) -> int:
    """An estimate of the prompt's tokens (messages, or every prompt of a prompt/input batch)."""
    return sum(prompt_estimates(body, context_length))


# vLLM's request models read integer fields with pydantic's lax rules: 3, 3.0, "3" and "3.0"
# are all 3 to the engine, so they must be 3 here too (a "n": 20.0 was reserved one choice,
# a "max_tokens": 9.0 the whole default).
_LAX_INT: TypeAdapter[int] = TypeAdapter(int)


def positive_int(value: Any) -> int | None:
    """A positive integer as the engine reads one; None for anything else (true / false too)."""
    if type(value) is not int:
        if value is None or isinstance(value, bool):
            return None
        try:
            value = _LAX_INT.validate_python(value)
        except ValidationError:
            return None
    return value if value > 0 else None


def reserved_tokens(
    body: dict[str, Any], default_max_tokens: int, context_length: int | None = None
) -> int:
    """Every prompt's estimate plus the most the engine may generate for it, times `n`: its
    max_tokens, or without one the default (or min_tokens, if more), capped by what the model's
    context leaves after the prompt, which is all reserved with ignore_eos: nothing stops it
    sooner. A max_tokens past the context is capped too: the engine refuses it (400), and a
    tpm limit must not refuse it first as too large (429)."""
    prompts = prompt_estimates(body, context_length)
    if "input" in body and "messages" not in body and "prompt" not in body:
        return sum(prompts)  # embeddings generate nothing
    limit = positive_int(body.get(_limit_field(body)))
    if limit is not None:  # no more than the context leaves (more is the engine's 400)
        if context_length is None:
            completion = limit * len(prompts)
        else:
            completion = sum(min(limit, max(1, context_length - p)) for p in prompts)
    else:  # the engine goes on to the context's end: at least min_tokens, all with ignore_eos
        least = max(default_max_tokens, positive_int(body.get("min_tokens")) or 0)
        if context_length is None:
            completion = least * len(prompts)
        elif _lax_true(body.get("ignore_eos")):
            completion = sum(max(1, context_length - p) for p in prompts)
        else:
            completion = sum(min(least, max(1, context_length - p)) for p in prompts)
    return sum(prompts) + completion * (positive_int(body.get("n")) or 1)


def _limit_field(body: dict[str, Any]) -> str:
    """The field whose value bounds the completion: chat's max_completion_tokens wins over its
    max_tokens, as in vLLM; a text completion has only max_tokens (vLLM ignores the other
    there: reserved by it, 5 became 50)."""
    if "messages" in body and body.get("max_completion_tokens"):
        return "max_completion_tokens"
    return "max_tokens"


def output_field_of(body: dict[str, Any], default_max_tokens: int) -> str:
    """The field a refusal as too large tells the client to lower: the one its reservation's
    completion came from (min_tokens when it is over the default), else the one to set."""
    field = _limit_field(body)
    if positive_int(body.get(field)) is not None or _lax_true(body.get("ignore_eos")):
        return field
    least = positive_int(body.get("min_tokens")) or 0
    return "min_tokens" if least > default_max_tokens else field


_LAX_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


def _lax_true(value: Any) -> bool:
    """Whether the engine reads `value` as true (true, 1, "true", "yes", ... as pydantic)."""
    try:
        return value is not None and _LAX_BOOL.validate_python(value)
    except ValidationError:
        return False


def _item_chars(item: Any) -> int:
    """One item of a Responses `input`: a message's content, or a tool call's output / args."""
    if not isinstance(item, dict):
        return 0
    chars = _content_chars(item.get("content"))
    for field in ("output", "arguments"):
        value = item.get(field)
        chars += len(value) if isinstance(value, str) else 0
    return chars


def response_input_tokens(body: dict[str, Any], context_length: int | None = None) -> int:
    """An estimate of a Responses API request's input: its `input` (a string, or items) and
    `instructions`, at most the model's context (longer is refused, or truncated with
    `truncation: auto`). A conversation continued with `previous_response_id` also re-reads
    earlier turns, which only the engine's usage report can know."""
    value = body.get("input")
    items = value if isinstance(value, list) else [{"content": value}]
    instructions = body.get("instructions")
    chars = sum(map(_item_chars, items))
    chars += len(instructions) if isinstance(instructions, str) else 0
    turns = len(items) + isinstance(instructions, str)  # each a message of the chat template
    tokens = chars // CHARS_PER_TOKEN + 1 + MESSAGE_TOKENS * turns + REPLY_TOKENS
    return tokens if context_length is None else min(tokens, context_length)


def response_tokens(
    body: dict[str, Any], default_max_tokens: int, context_length: int | None = None
) -> int:
    """A Responses API request: its input's estimate plus `max_output_tokens` (else the
    default, capped by the context left)."""
    prompt = response_input_tokens(body, context_length)
    limit = positive_int(body.get("max_output_tokens"))
    if limit is None:
        limit = default_max_tokens
        if context_length is not None:
            limit = min(limit, max(1, context_length - prompt))
    return prompt + limit
